"""The structured-output grammar (models/grammar.py) on the random presets' WordPiece vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leaninfer.models.grammar import UnsupportedSchemaError, check_schema, json_grammar


def test_a_walk_of_allowed_tokens_spells_valid_json_and_never_a_special_token(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    g = json_grammar(tiny_gpt2, {"type": "json_schema", "json_schema": {"name": "t", "schema": {
        "type": "object", "properties": {"k": {"enum": ["yes", "no"]}, "v": {"type": "integer", "minimum": 0,
                                                                            "maximum": 9}},
        "required": ["k", "v"], "additionalProperties": False}}})
    specials = [i for i in tok.all_special_ids if i != tok.eos_token_id]
    rng = np.random.default_rng(0)
    for _ in range(20):
        m, out = g.matcher(), []
        while not m.done():
            allowed = m.allowed()
            assert not allowed[specials].any()
            assert not allowed[tok.eos_token_id]  # EOS only once the value is complete (here: done)
            t = int(rng.choice(np.flatnonzero(allowed)))
            m.advance(t)
            out.append(t)
        value = json.loads(g.decode(out))
        assert value["k"] in ("yes", "no") and 0 <= value["v"] <= 9


def test_text_is_no_grammar_and_bad_schemas_name_the_construct(tiny_gpt2):
    assert json_grammar(tiny_gpt2, None) is None and json_grammar(tiny_gpt2, {"type": "text"}) is None
    with pytest.raises(UnsupportedSchemaError, match="if"):
        check_schema({"if": {}, "then": {}})
    with pytest.raises(UnsupportedSchemaError, match="can't write"):
        json_grammar(tiny_gpt2, {"type": "json_schema", "json_schema": {"name": "t", "schema": {"const": "Upper"}}})
