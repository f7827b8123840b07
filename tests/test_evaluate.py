"""The quality gate's figures: STS Spearman, cosine to reference, perplexity/KL/top-1, bad input."""

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.evaluate import RANDOM_NOTE, evaluate, read_sts

PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "A woman is cutting an onion.", 4.6),
    ("A dog runs in the park.", "A dog is running through the grass.", 3.8),
    ("The cat sleeps on the sofa.", "A cat is sleeping.", 3.4),
    ("A child is riding a bike.", "A man is riding a horse.", 1.6),
    ("The stock market fell today.", "A woman is playing the flute.", 0.0),
    ("Heavy rain flooded the village.", "A man is eating pasta.", 0.2),
    ("Two men are fighting.", "The recipe needs three eggs.", 0.0),
]


@pytest.fixture
def sts_csv(tmp_path):
    p = tmp_path / "sts.csv"
    p.write_text("\n".join(f'"{a}","{b}",{s}' for a, b, s in PAIRS) + "\n")
    return p


def test_sts_spearman_of_minilm_on_clear_pairs(minilm, sts_csv):
    q = evaluate(minilm, minilm, sts=sts_csv)
    assert q["sts_spearman"] > 80  # clear paraphrases vs unrelated pairs: a working model ranks them right
    assert q["sts_drop_pts"] == pytest.approx(0.0, abs=1e-9)
    assert q["mean_cosine_to_reference"] == pytest.approx(1.0, abs=1e-6)


def test_random_model_reports_no_task_quality(tiny_bert, sts_csv):
    q = evaluate(tiny_bert, tiny_bert, sts=sts_csv)
    assert q["sts_spearman"] == RANDOM_NOTE and q["weights"] == "random"
    assert q["mean_cosine_to_reference"] == pytest.approx(1.0, abs=1e-6)


def test_causal_eval_against_itself(tiny_gpt2):
    q = evaluate(tiny_gpt2, tiny_gpt2)
    assert q["perplexity"] == RANDOM_NOTE
    assert q["kl_to_reference"] == pytest.approx(0.0, abs=1e-9) and q["top1_agreement"] == 1.0


def test_sts_bad_rows_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,1\nc,d\n")
    with pytest.raises(LeaninferError, match="line 2 has 2 columns; expected 3"):
        read_sts(bad)
    bad.write_text("sentence1,sentence2,score\na,b,1\n")
    with pytest.raises(LeaninferError, match="line 1: score 'score' is not a number"):
        read_sts(bad)
    with pytest.raises(LeaninferError, match="cannot read STS file"):
        read_sts(tmp_path / "missing.csv")


def test_task_mismatch_is_refused(minilm, tiny_gpt2):
    with pytest.raises(LeaninferError, match="reference is a causal-lm model"):
        evaluate(minilm, tiny_gpt2)
