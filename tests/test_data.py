"""The texts a benchmark reads: bundled, an STS-B CSV's first column, or one per line."""

from __future__ import annotations

from leaninfer.data import default_texts, read_sentences


def test_read_sentences_takes_the_bundled_texts_a_csv_first_column_or_lines(tmp_path):
    assert read_sentences(None) == default_texts()
    csv_path = tmp_path / "sts.csv"
    csv_path.write_text('"A man, with a hat.",A woman.,3.2\n\nTwo dogs.,Cats.,1.0\n', encoding="utf-8")
    assert read_sentences(csv_path) == ["A man, with a hat.", "Two dogs."]
    lines = tmp_path / "texts.txt"
    lines.write_text("first, with a comma\n\n  second  \n", encoding="utf-8")
    assert read_sentences(str(lines)) == ["first, with a comma", "second"]
