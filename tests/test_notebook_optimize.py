"""notebooks/01_optimize.ipynb runs top to bottom (its last cells assert the quality it shows)."""

import pytest

from .notebooks import run_notebook

pytestmark = pytest.mark.slow  # a notebook


def test_optimize_notebook_executes(tmp_path):
    # a failing cell raises (nbclient's CellExecutionError)
    assert "onnx:int8" in run_notebook("01_optimize.ipynb", tmp_path)
