"""Run a notebook of notebooks/ top to bottom, as the tests that execute them do."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, cwd: Path | None = None, timeout_s: int = 600) -> str:
    """Execute ``notebooks/<name>`` (a failing cell raises) in ``cwd`` (default: notebooks/); return the text
    its code cells printed."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd or NOTEBOOKS)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
