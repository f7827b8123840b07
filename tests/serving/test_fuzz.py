"""Schema-driven fuzzing: schemathesis generates requests from the server's own /openapi.json and sends them
in-process (ASGI). No input, valid or not, may get a 5xx, and answers must match what the schema documents.

The operations are driven from one test (rather than ``@schema.parametrize``) because the schema comes from
an app built on session fixtures, and schemathesis' lazy fixture loader doesn't run under pytest 9.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from leaninfer.serving.app import ServerConfig, create_app
from leaninfer.serving.engine import BatchingConfig

pytestmark = pytest.mark.timeout(300)

EXAMPLES = 100  # per operation and mode (7 operations x 2 modes): about 15 s on 2 cores
MAX_GENERATED = 8


def _short_generations(case):
    # A valid max_tokens that fits the context runs that many decode steps: cap those at a few, so the examples
    # go to variety rather than to long generations (larger values still reach the context check).
    # A chat that omits both runs 256 steps (its default): ask for a few there too.
    body = case.body if isinstance(case.body, dict) else {}
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(key), int) and MAX_GENERATED < body[key] <= 512:
            body[key] = MAX_GENERATED
    if "messages" in body and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_GENERATED
    return case


def test_schemathesis_finds_no_server_error(served):
    app = create_app(served, ServerConfig(BatchingConfig(max_wait_ms=1), request_timeout_s=30))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/embeddings", "/v1/completions", "/v1/chat/completions", "/health"}
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)
            if mode is GenerationMode.POSITIVE:
                strategy = strategy.map(_short_generations)
            @given(case=strategy)
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                # Every other check runs: no 5xx, documented status codes, content types and bodies, invalid
                # data refused. A schema-valid body may still be refused: the prompt's length, token ids and
                # dimensions depend on the model, which a static schema can't say.
                case.call_and_validate(excluded_checks=[positive_data_acceptance])

            try:
                fuzz()
            except Unsatisfiable:  # nothing to get wrong in a request without parameters (GET /health)
                assert mode is GenerationMode.NEGATIVE
