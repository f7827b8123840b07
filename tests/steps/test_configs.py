"""Every config field a user can set (step parameters, recipe keys, floors) says what it does."""

import pytest

from leaninfer.pipeline import Recipe
from leaninfer.quality import Floors
from leaninfer.steps import STEPS

CONFIGS = {**STEPS, "Recipe": Recipe, "Floors": Floors}


def test_every_step_is_checked():
    assert len(STEPS) >= 15  # the registry is populated: an empty one would make the test below vacuous


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_field_has_a_description(name):
    cls = CONFIGS[name]
    missing = [f"{name}.{field}" for field, info in cls.model_fields.items()
               if not (info.description or "").strip()]
    assert not missing, f"config fields without a description=: {missing}"
