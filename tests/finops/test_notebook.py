"""notebooks/04_finops.ipynb runs top to bottom and shows what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

NB = Path(__file__).resolve().parents[2] / "notebooks" / "04_finops.ipynb"


@pytest.mark.timeout(600)
def test_finops_notebook_runs():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=500, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "without a key: 401" in text
    assert "route embed served by minilm" in text
    assert "repeat: cached=True, cost $0.0" in text
    assert "spike triggered" in text  # the burst fired an alert
    assert "refused: budget_exceeded" in text and "then: 429 budget_exceeded" in text
    assert "search  autocomplete" in text and "plot written: True" in text
