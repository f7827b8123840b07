"""notebooks/02_cost_curves.ipynb runs end to end (tiny suite: seconds)."""

import pytest

from ..notebooks import run_notebook

pytestmark = pytest.mark.slow  # a notebook


def test_cost_curves_notebook_runs(tmp_path):
    # a failing cell raises (nbclient's CellExecutionError)
    assert "projected" in run_notebook("02_cost_curves.ipynb", tmp_path, timeout_s=240)
