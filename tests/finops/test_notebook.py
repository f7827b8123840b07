"""notebooks/04_finops.ipynb runs top to bottom and shows what it promises."""

from __future__ import annotations

import pytest

from ..notebooks import run_notebook

pytestmark = pytest.mark.slow  # a notebook


@pytest.mark.timeout(600)
def test_finops_notebook_runs():
    text = run_notebook("04_finops.ipynb", timeout_s=500)
    assert "without a key: 401" in text
    assert "route embed served by minilm" in text
    assert "repeat: cached=True, cost $0.0" in text
    assert "spike triggered" in text  # the burst fired an alert
    assert "refused: budget_exceeded" in text and "then: 429 budget_exceeded" in text
    assert "search  autocomplete" in text and "plot written: True" in text
