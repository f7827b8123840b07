"""Client strings that reach the ledger and metric labels, checked at the edge: bounded, and free of NUL and
other control characters (C0, DEL, C1). A NUL can't be stored in PostgreSQL TEXT (it once failed a whole
group commit of other tenants' rows), and escapes would reach an admin's terminal through ``leaninfer usage``.

The body's ``model`` and ``user`` are checked by the request schemas (:mod:`.protocol`, same rule); the
headers are checked here. Every refusal is a 400 naming the header and what is valid.
"""

from __future__ import annotations

from .protocol import OpenAIError, control_char

WORKFLOW_HEADER = "X-Leaninfer-Workflow"
TAGS_HEADER = "X-Leaninfer-Tags"
MAX_WORKFLOW = 64
MAX_TAG = 64  # a tag's key and its value, each
MAX_TAGS = 16
_OWS = " \t"  # the whitespace HTTP allows around values: stripped; any other control is refused


def check_label(text: str, param: str, limit: int, what: str = "") -> str:
    """``text`` if it is at most ``limit`` characters without control characters, else a 400 naming ``param``
    (``what``: which part of it, e.g. "tag key 'env'")."""
    what = what or param
    if len(text) > limit:
        raise OpenAIError(400, f"{what} has {len(text)} characters; at most {limit} are allowed", param=param,
                          code="invalid_value")
    why = control_char(text)
    if why is not None:
        raise OpenAIError(400, f"{what} {why}", param=param, code="invalid_value")
    return text


def workflow_label(text: str) -> str:
    """The ``X-Leaninfer-Workflow`` header, checked ("" when absent).

    Example:
        >>> workflow_label(" nightly-eval ")
        'nightly-eval'
    """
    return check_label(text.strip(_OWS), WORKFLOW_HEADER, MAX_WORKFLOW)


def parse_tags(text: str) -> dict[str, str]:
    """The ``X-Leaninfer-Tags`` header, ``"key=value,key=value"``, as a dict ({} when absent); a malformed
    header (an item without ``=`` or without a key, more than :data:`MAX_TAGS` tags, a key or value longer than
    :data:`MAX_TAG` characters, a control character) is a 400 naming it. A key given twice keeps its last value.

    Example:
        >>> parse_tags("env=prod, feature=search")
        {'env': 'prod', 'feature': 'search'}
    """
    items = [t.strip(_OWS) for t in text.split(",")]
    items = [t for t in items if t]
    if len(items) > MAX_TAGS:  # before any other work: the header may be as long as the server takes
        raise OpenAIError(400, f"{TAGS_HEADER} has {len(items)} tags; at most {MAX_TAGS} are allowed",
                          param=TAGS_HEADER, code="invalid_value")
    tags = {}
    for item in items:
        k, eq, v = item.partition("=")
        k, v = k.strip(_OWS), v.strip(_OWS)
        if not eq or not k:
            raise OpenAIError(400, f"{TAGS_HEADER} item {item[:MAX_TAG]!r} must be key=value (comma-separated, each key "
                                   f"and value at most {MAX_TAG} characters)", param=TAGS_HEADER,
                              code="invalid_value")
        check_label(k, TAGS_HEADER, MAX_TAG, f"{TAGS_HEADER} key {k[:MAX_TAG]!r}")
        tags[k] = check_label(v, TAGS_HEADER, MAX_TAG, f"{TAGS_HEADER} value of {k!r}")
    return tags


__all__ = ["MAX_TAG", "MAX_TAGS", "MAX_WORKFLOW", "TAGS_HEADER", "WORKFLOW_HEADER", "check_label", "parse_tags",
           "workflow_label"]
