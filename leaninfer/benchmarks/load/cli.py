"""``leaninfer load``: drive any OpenAI-compatible server with the project's load generator. Registered by
leaninfer.cli."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ...data import read_texts
from ...errors import LeaninferError, valid_list
from .loadgen import ENDPOINTS, LoadSpec, run_load

console = Console(stderr=True)
out = Console()


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def register(app: typer.Typer, user_errors) -> None:
    @app.command("load")
    @user_errors
    def load_cmd(
        model: str = typer.Option(..., "--model", help="served model name"),
        base_url: str = typer.Option("http://127.0.0.1:8000/v1", "--base-url"),
        endpoint: str = typer.Option("embeddings", "--endpoint", help="embeddings | completions | chat"),
        concurrency: str = typer.Option(None, "--concurrency", help="closed-loop client counts, e.g. 1,8,32"),
        rate: str = typer.Option(None, "--rate", help="open-loop Poisson arrival rates (requests/s), e.g. 2,5"),
        requests: int = typer.Option(200, "--requests", min=1, help="requests per level"),
        duration_s: float = typer.Option(None, "--duration-s", min=0.1, help="time per level instead of a count"),
        prompt_tokens: int = typer.Option(32, "--prompt-tokens", min=1),
        max_tokens: int = typer.Option(64, "--max-tokens", min=1),
        inputs_per_request: int = typer.Option(1, "--inputs-per-request", min=1),
        texts: Path = typer.Option(None, "--texts", exists=True, dir_okay=False,
                                   help="send these texts (one per line, request i takes line i) "
                                        "instead of --prompt-tokens words"),
        ignore_eos: bool = typer.Option(True, "--ignore-eos/--respect-eos", help="generate exactly max_tokens"),
        timeout_s: float = typer.Option(300.0, "--timeout-s", min=0.1),
        api_key: str = typer.Option(None, "--api-key", envvar="LEANINFER_API_KEY",
                                    help="a key for a server run with --auth keys (env LEANINFER_API_KEY)"),
        json_out: Path = typer.Option(None, "--json", help="write the results as JSON here ('-' for stdout)"),
    ):
        """Load-test an OpenAI-compatible server: throughput and TTFT/ITL/e2e percentiles per level."""
        if endpoint not in ENDPOINTS:
            raise LeaninferError(f"unknown --endpoint {endpoint!r}; valid: {valid_list(ENDPOINTS)}")
        try:
            conc = [int(c) for c in _csv(concurrency)]
            rates = [float(r) for r in _csv(rate)]
        except ValueError:
            raise LeaninferError(f"--concurrency takes integers and --rate numbers, got {concurrency!r} / {rate!r}") \
                from None
        if not conc and not rates:
            conc = [1]
        if any(c < 1 for c in conc) or any(r <= 0 for r in rates):
            raise LeaninferError("concurrency levels must be >= 1 and rates > 0")
        spec = LoadSpec(base_url=base_url, model=model, endpoint=endpoint, prompt_tokens=prompt_tokens,
                        max_tokens=max_tokens, inputs_per_request=inputs_per_request, requests=requests,
                        texts=read_texts(texts) if texts else None,
                        duration_s=duration_s, timeout_s=timeout_s, ignore_eos=ignore_eos, api_key=api_key)
        results = run_load(spec, conc, rates, on_level=lambda r: console.print(
            f"{r.mode} {r.level:g}: {r.requests_per_s:.1f} req/s, {r.errors} errors"))
        if all(r.requests == r.errors for r in results):
            raise LeaninferError(f"every request failed at {base_url}: {results[0].error_examples}")
        t = Table(title=f"{endpoint} on {model} @ {base_url}")
        for col in ("level", "req", "err", "req/s", "in tok/s", "out tok/s", "e2e p50 ms", "e2e p95 ms",
                    "ttft p50 ms", "ttft p95 ms", "itl p50 ms", "itl p95 ms"):
            t.add_column(col, justify="right")

        def f(x):
            return "-" if x is None else f"{x:.1f}"

        for r in results:
            t.add_row(f"{'c' if r.mode == 'concurrency' else 'r'}={r.level:g}", str(r.requests), str(r.errors),
                      f(r.requests_per_s), f(r.input_tokens_per_s), f(r.output_tokens_per_s), f(r.e2e.p50_ms),
                      f(r.e2e.p95_ms), f(r.ttft.p50_ms), f(r.ttft.p95_ms), f(r.itl.p50_ms), f(r.itl.p95_ms))
        out.print(t)
        if json_out is not None:
            spec_doc = {**spec.__dict__, "api_key": "<redacted>" if api_key else None}  # never a key on disk
            doc = json.dumps({"spec": spec_doc, "results": [r.to_dict() for r in results]}, indent=2)
            if str(json_out) == "-":
                print(doc)
            else:
                json_out.write_text(doc)
