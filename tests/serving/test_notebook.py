"""notebooks/03_serving.ipynb runs top to bottom."""

from __future__ import annotations

import pytest

from ..notebooks import run_notebook

pytestmark = pytest.mark.slow  # a notebook


@pytest.mark.timeout(180)
def test_serving_notebook_runs():
    text = run_notebook("03_serving.ipynb", timeout_s=150)
    assert "384 dims" in text and "concurrency" in text
