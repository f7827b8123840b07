"""Structured output: a ``response_format`` compiled into a token grammar for one model's tokenizer.

Why llguidance (1.9.1) rather than xgrammar or outlines-core: on CPU with a GPT-2-sized byte-level BPE tokenizer
(50,257 tokens) its mask and advance cost 87-94 us a token, xgrammar's 25-77 us, outlines-core's 0.75-1.1 ms
(docs/serving.md has the setup). xgrammar is faster, but both are small next to a decode step; a schema compiles
lazily in llguidance (1 ms; xgrammar 11-38 ms); its wheel is one abi3 file with no dependencies, where xgrammar
pulls triton and apache-tvm-ffi into a CPU install; and it names the construct it can't compile ("Unimplemented
keys: [\"if\", \"then\"]"), which becomes the 400. vLLM, SGLang and llama.cpp use it.

The engine sees only :class:`JsonGrammar` (``matcher()``, ``decode``) and :class:`Matcher` (``allowed``,
``advance``, ``done``): the tokenizer and the library stay here.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np


class UnsupportedSchemaError(ValueError):
    """The schema (or response_format) can't be compiled; the message names the construct."""


class GrammarDeadEnd(RuntimeError):
    """Mid-generation, the grammar allows no token this model can write next (a WordPiece vocabulary lacking
    what the schema needs at that point): the schema can't be completed on this model."""


_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (vocab, LLTokenizer)


class _WordPieceTokens:
    """llguidance's tokenizer interface over a WordPiece vocabulary (the bundled one of ``random:`` presets),
    which llguidance.hf can't read: a token is its text without the ``##`` mark, so a constrained output is
    the concatenation of its tokens, and is decoded so (:meth:`JsonGrammar.decode`), exactly as validated."""

    def __init__(self, tokenizer, vocab_size: int):
        inv = {i: t for t, i in tokenizer.get_vocab().items()}
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = None
        self.special_token_ids = [i for i in tokenizer.all_special_ids if i < vocab_size]
        self.tokens = [(inv.get(i, "")[2:] if inv.get(i, "").startswith("##") else inv.get(i, "")).encode()
                       for i in range(vocab_size)]
        # [UNK], [CLS], [MASK]...: never text; seen let through where the grammar needs bytes no token has
        self.forbidden = np.zeros(vocab_size, dtype=bool)
        self.forbidden[[i for i in self.special_token_ids if i != self.eos_token_id]] = True
        self.chars = set("".join(t.decode("utf-8", "replace") for i, t in enumerate(self.tokens)
                                 if not self.forbidden[i] and i != self.eos_token_id))
        self._tok = tokenizer

    def __call__(self, s):
        text = s.decode("utf-8", "replace") if isinstance(s, bytes) else s
        return self._tok.encode(text, add_special_tokens=False)


def _ll_tokenizer(tokenizer, vocab_size: int):
    import llguidance
    import llguidance.hf

    got = _TOKENIZERS.get(tokenizer)
    if got is not None and got[0] == vocab_size:
        return got[1], got[2]
    try:
        ll, wordpiece = llguidance.hf.from_tokenizer(tokenizer, vocab_size), None
    except ValueError:  # not byte-level BPE (WordPiece): described token by token
        wordpiece = _WordPieceTokens(tokenizer, vocab_size)
        ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(wordpiece))
    _TOKENIZERS[tokenizer] = (vocab_size, ll, wordpiece)
    return ll, wordpiece


def _literals(schema) -> list[str]:
    """The text a schema spells out: enum and const strings, property names, patterns."""
    out: list[str] = []
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k in ("enum", "const"):
                out += [x for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)]
            elif k == "pattern" and isinstance(v, str):
                out.append(v)
            elif k == "properties" and isinstance(v, dict):
                out += [x for x in v if isinstance(x, str)]
            out += _literals(v)
    elif isinstance(schema, list):
        for v in schema:
            out += _literals(v)
    return out


def schema_of(response_format: dict[str, Any]) -> dict | None:
    """The JSON schema a validated ``response_format`` asks for: None for text, ``{"type": "object"}`` for
    json_object."""
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        return response_format["json_schema"].get("schema") or {}
    return None


def check_schema(schema: dict) -> None:
    """Raise :class:`UnsupportedSchemaError` naming what llguidance can't compile in ``schema``."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        error = llguidance.LLMatcher.validate_grammar(grammar, None)
    except Exception as e:  # a schema the library refuses outright (a non-object, say)
        error = str(e) or type(e).__name__
    if error:
        raise UnsupportedSchemaError(error.strip())


class JsonGrammar:
    """A JSON schema compiled for one tokenizer and vocabulary width; :meth:`matcher` starts one sequence.

    >>> import leaninfer
    >>> g = JsonGrammar(leaninfer.load("random:tiny-gpt2").tokenizer, 30522, {"type": "boolean"})
    >>> m = g.matcher(); int(m.allowed().sum()) > 0
    True
    """

    def __init__(self, tokenizer, vocab_size: int, schema: dict):
        import llguidance

        check_schema(schema)
        self.vocab_size = vocab_size
        self._ll, wordpiece = _ll_tokenizer(tokenizer, vocab_size)
        self._forbidden = None if wordpiece is None else wordpiece.forbidden
        if wordpiece is not None:  # a byte-level vocabulary writes any text; a WordPiece one may not
            missing = sorted({c for t in _literals(schema) for c in t if c not in wordpiece.chars})
            if missing:
                raise UnsupportedSchemaError(f"the schema spells characters this model's WordPiece vocabulary "
                                             f"can't write: {''.join(missing[:10])!r}")
        self._grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)

    def matcher(self) -> Matcher:
        return Matcher(self)

    def decode(self, ids: list[int]) -> str:
        """The text of constrained tokens: exactly the bytes the grammar validated."""
        return self._ll.decode_bytes(list(ids)).decode("utf-8", "replace")


class Matcher:
    """One sequence's place in a grammar: the tokens allowed next, and whether the grammar is complete."""

    def __init__(self, grammar: JsonGrammar):
        import llguidance
        import llguidance.numpy as lnp

        self._m = llguidance.LLMatcher(grammar._ll, grammar._grammar)
        self._n = grammar.vocab_size
        self._forbidden = grammar._forbidden
        self._bits = lnp.allocate_token_bitmask(1, grammar.vocab_size)
        self._fill = lnp.fill_next_token_bitmask

    def allowed(self) -> np.ndarray:
        """A bool mask over the vocabulary: EOS is in it only once the grammar accepts."""
        self._fill(self._m, self._bits, 0)
        if self._m.is_error():
            raise GrammarDeadEnd(f"grammar error: {self._m.get_error()}")
        mask = np.unpackbits(self._bits[0].view(np.uint8), bitorder="little")[: self._n].astype(bool)
        if self._forbidden is not None:
            mask &= ~self._forbidden
        return mask

    def advance(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            raise GrammarDeadEnd(f"grammar refused token {token}: {self._m.get_error()}")

    def done(self) -> bool:
        """The grammar is complete and allows nothing more (the JSON value is closed)."""
        return self._m.is_stopped()


def json_grammar(model, response_format: dict[str, Any] | None) -> JsonGrammar | None:
    """The grammar a ``response_format`` asks for on this model's tokenizer and logits width, or None (text).
    Raises :class:`UnsupportedSchemaError` with the library's words for a schema it can't compile."""
    schema = schema_of(response_format or {})
    if schema is None:
        return None
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or len(model.tokenizer)
    return JsonGrammar(model.tokenizer, vocab, schema)
