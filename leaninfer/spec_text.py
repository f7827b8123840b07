"""The one text syntax for a named thing with parameters: ``step:key=value,...`` (``optimize --steps``,
``bench --variants``, recipe shorthand, ``serve --route NAME=auto:...``). A module of its own so that parsing a
route or a variant list doesn't import the optimize pipeline."""

from __future__ import annotations

import re

from .errors import StepError


def split_step_text(text: str) -> list[dict]:
    """``"prune-ffn:ratio=0.3,num_calibration_texts=8,int8:method=torch-dynamic"`` -> step mappings.

    One syntax wherever a step is named (``optimize --steps``, ``bench --variants``, recipe shorthand):
    ``step:key=value``, further ``key=value`` pairs after a comma or a colon; a comma item without ``=`` starts
    the next step, and so does ``+`` (``onnx+ort-int8``: how ``bench --variants``, whose commas separate
    variants, chains the steps of one variant). Values stay strings: the step's own config validates and
    converts them.

    >>> split_step_text("onnx+ort-int8:per_channel=true")
    [{'step': 'onnx'}, {'step': 'ort-int8', 'per_channel': 'true'}]
    """
    out: list[dict] = []
    for item in (x.strip() for x in text.split(",")):
        # `+` before a letter chains steps; `1e+3` stays a number.
        for j, part in enumerate(p.strip() for p in _STEP_JOIN.split(item)):
            if not part:
                continue
            head, *pairs = part.split(":")
            if "=" in head:  # `key=value` continuing the previous step's parameters
                if not out or j:
                    where = "after '+'" if j else "before any step name"
                    raise StepError(f"steps {text!r}: parameter {head!r} comes {where}; write step:{head}")
                pairs, head = [head, *pairs], None
            if head is not None:
                out.append({"step": head.strip()})
            for kv in pairs:
                k, eq, v = kv.partition("=")
                if not eq or not k.strip():
                    raise StepError(f"steps {text!r}: parameter {kv!r} of step {out[-1]['step']!r} must be "
                                    "key=value")
                out[-1][k.strip()] = v.strip()
    return out


_STEP_JOIN = re.compile(r"\+(?=\s*[A-Za-z])")
