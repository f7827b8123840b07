"""Model references: the bundled default, random presets, local directories, bad references."""

import numpy as np
import pytest

import leaninfer
from leaninfer.errors import UnknownModelError
from leaninfer.models import RANDOM_PRESETS, minilm_path

SENTENCES = ["A man is playing a guitar.", "The stock market fell sharply today.", "a"]


def test_minilm_matches_sentence_transformers_exactly(minilm):
    # sentence-transformers is the reference implementation of this model's pooling and normalisation.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path()), device="cpu")
    ours = minilm.embed(SENTENCES)
    theirs = st.encode(SENTENCES)
    assert minilm.max_seq_length == 256 == st.max_seq_length
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_embed_keeps_input_order_when_batches_are_length_sorted(minilm):
    texts = ["short", "a much longer sentence than the first one, with many words in it", "mid length text"]
    together = minilm.embed(texts, batch_size=2)
    alone = np.stack([minilm.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_random_presets_have_real_dimensions():
    gpt2 = RANDOM_PRESETS["gpt2"].make_config()
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.vocab_size) == (768, 12, 50257)
    llama = RANDOM_PRESETS["llama-3.2-1b"].make_config()
    assert (llama.hidden_size, llama.num_hidden_layers, llama.vocab_size, llama.num_key_value_heads) == (2048, 16, 128256, 8)
    qwen = RANDOM_PRESETS["qwen2.5-0.5b"].make_config()
    assert (qwen.hidden_size, qwen.num_hidden_layers, qwen.vocab_size) == (896, 24, 151936)
    bert = RANDOM_PRESETS["bert-base"].make_config()
    assert (bert.hidden_size, bert.num_hidden_layers) == (768, 12)


def test_random_model_is_labelled_and_deterministic(tiny_gpt2):
    assert tiny_gpt2.weights == "random" and tiny_gpt2.is_random and tiny_gpt2.task == "causal-lm"
    again = leaninfer.load("random:tiny-gpt2")
    enc = tiny_gpt2.tokenize(["the same weights in every process"])
    np.testing.assert_array_equal(tiny_gpt2.logits_batch(enc), again.logits_batch(enc))


def test_random_minilm_shape_preset_counts_parameters():
    m = leaninfer.load("random:minilm-l6")
    assert m.task == "embedding" and m.weights == "random"
    assert 22_000_000 < m.num_parameters() < 23_000_000  # all-MiniLM-L6-v2 has 22.7M


def test_unknown_reference_lists_valid_ones():
    with pytest.raises(UnknownModelError) as e:
        leaninfer.load("./no/such/model/dir")
    assert "no/such/model/dir" in str(e.value) and "minilm" in str(e.value) and "random:gpt2" in str(e.value)


def test_unknown_random_preset_lists_presets():
    with pytest.raises(UnknownModelError, match="unknown random preset 'gpt5'.*tiny-bert"):
        leaninfer.load("random:gpt5")


def test_bad_task_is_named():
    with pytest.raises(UnknownModelError, match="unknown task 'translation'.*causal-lm, embedding"):
        leaninfer.load("minilm", task="translation")


def test_local_directory_loads_with_task_override(tmp_path, tiny_gpt2):
    tiny_gpt2.module.save_pretrained(tmp_path)
    tiny_gpt2.tokenizer.save_pretrained(tmp_path)
    m = leaninfer.load(tmp_path)
    assert m.task == "causal-lm"
    enc = m.tokenize(["round trip through a directory"])
    np.testing.assert_allclose(m.logits_batch(enc), tiny_gpt2.logits_batch(enc), atol=1e-5)


def test_generate_is_greedy_and_deterministic(tiny_llama):
    a = tiny_llama.generate(["once upon a time"], max_new_tokens=6)
    b = tiny_llama.generate(["once upon a time"], max_new_tokens=6)
    assert a == b and len(a[0]) == 6
    # Greedy: the first new token is the argmax of the prompt's last logits.
    enc = tiny_llama.tokenize(["once upon a time"])
    assert a[0][0] == int(tiny_llama.logits_batch(enc)[0, -1].argmax())
