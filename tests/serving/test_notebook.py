"""notebooks/03_serving.ipynb runs top to bottom."""

from __future__ import annotations

from pathlib import Path

import pytest

NB = Path(__file__).resolve().parents[2] / "notebooks" / "03_serving.ipynb"


@pytest.mark.timeout(180)
def test_serving_notebook_runs():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=150, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "384 dims" in text and "concurrency" in text
