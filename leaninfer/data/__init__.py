"""Texts that ship with leaninfer (written by the project): evaluation, calibration and a small corpus.

``default_texts()`` — a few hundred varied English sentences for fidelity checks and calibration;
``default_document()`` — a prose passage for perplexity of causal LMs. No downloads, ever.
"""

from __future__ import annotations

import csv
import functools
import itertools
from pathlib import Path

HERE = Path(__file__).parent


@functools.lru_cache(maxsize=1)
def default_texts() -> list[str]:
    hand = [line.strip() for line in (HERE / "sentences.txt").read_text().splitlines() if line.strip()]
    # Templated sentences widen the vocabulary and lengths without needing a dataset.
    subjects = ["A man", "A woman", "The child", "Two dogs", "An old farmer", "The committee", "A small bird",
                "The engineer", "A group of students", "The orchestra"]
    actions = ["is slicing a tomato on a wooden board", "walks slowly along the frozen river",
               "was arguing about the budget for next year", "plays a quiet song on the piano",
               "has repaired the broken engine before sunrise", "is reading a long letter from home",
               "chased the ball across the muddy field", "will present the results at the conference"]
    templated = [f"{s} {a}." for s, a in itertools.islice(itertools.product(subjects, actions), 0, None, 3)]
    return hand + templated


@functools.lru_cache(maxsize=1)
def default_document() -> str:
    return (HERE / "document.txt").read_text()


def read_texts(path: str | Path) -> list[str]:
    """One text per non-empty line of a file."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_sentences(path: str | Path | None) -> list[str]:
    """The texts of a benchmark: the bundled ``default_texts()`` without a path, the first column of an STS-B
    style CSV (``sentence1,sentence2,score``), or one text per non-empty line of any other file."""
    if not path:
        return default_texts()
    if str(path).endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            return [row[0] for row in csv.reader(f) if row]
    return read_texts(path)
