"""``leaninfer serve`` (registered into the main typer app by ``leaninfer.cli``)."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from pydantic import BaseModel
from rich.console import Console

from ..engines.engine import BatchingConfig
from ..errors import LeaninferError, valid_list
from ..finops.config import FinOpsConfig
from ..finops.store import DEFAULT_STORE
from ..hardware import get_profile
from ..models import load
from .app import create_app
from .drain import DrainingServer
from .ray_serve import RayOptions, require_ray, serve_until_signal
from .state import ServerConfig
from .upstreams import parse_upstream

console = Console(stderr=True)
out = Console()


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _option(config: type[BaseModel], field: str, **kwargs):
    """A ``--field-name`` option whose default and help are the config field's own."""
    info = config.model_fields[field]
    return typer.Option(info.default, "--" + field.replace("_", "-"), help=info.description, **kwargs)


def derive_name(ref: str) -> str:
    """A served name from a reference: ``random:gpt2`` -> ``gpt2``, ``out/minilm-int8/`` -> ``minilm-int8``."""
    name = ref.split(":", 1)[1] if ref.startswith("random:") else Path(ref.rstrip("/")).name or ref
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def resolve_usd_per_hour(hardware: str | None, usd_per_hour: float | None) -> float:
    if usd_per_hour is not None:
        if usd_per_hour < 0:
            raise LeaninferError(f"--usd-per-hour must be >= 0, got {usd_per_hour}")
        return float(usd_per_hour)
    if hardware is None:
        return 0.0
    profile = get_profile(hardware)  # raises a LeaninferError naming the valid profiles
    if profile.usd_per_hour is None:
        raise LeaninferError(f"hardware profile {hardware!r} has no price; give --usd-per-hour")
    return float(profile.usd_per_hour)


def register(app: typer.Typer, user_errors) -> None:
    @app.command("serve")
    @user_errors
    def serve_cmd(
        models: list[str] = typer.Argument(None, help="model references or artifact directories"),
        upstream: list[str] = typer.Option(None, "--upstream", help="NAME=URL[,key_env=VAR][,tariff=FILE][,model="
                                           "ID][,task=TASK][,timeout_s=S]: serve NAME by forwarding to an "
                                           "OpenAI-compatible engine, governed and priced per token by its "
                                           "tariff file (tariff=free: $0 on purpose); repeatable "
                                           "(docs/upstream.md)"),
        name: list[str] = typer.Option(None, "--name", help="served name per model, in order (default: derived)"),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8000, "--port", min=0, max=65535),
        device: str = typer.Option("cpu", "--device"),
        max_batch_size: int = _option(BatchingConfig, "max_batch_size", min=1),
        max_wait_ms: float = _option(BatchingConfig, "max_wait_ms", min=0),
        max_batch_tokens: int = _option(BatchingConfig, "max_batch_tokens", min=1),
        prefill_chunk_tokens: int = _option(BatchingConfig, "prefill_chunk_tokens", min=0),
        lanes: int = _option(BatchingConfig, "lanes", min=1),
        max_queue: int = _option(BatchingConfig, "max_queue", min=1),
        max_queue_tokens: int = _option(BatchingConfig, "max_queue_tokens", min=1),
        hardware: str = typer.Option(None, "--hardware", help="hardware profile: its $/hour prices requests"),
        usd_per_hour: float = typer.Option(None, "--usd-per-hour", help="price of this machine (overrides)"),
        request_timeout_s: float = _option(ServerConfig, "request_timeout_s", min=0.001),
        max_body_bytes: int = _option(ServerConfig, "max_body_bytes", min=1),
        max_request_chars: int = _option(ServerConfig, "max_request_chars", min=1),
        max_request_items: int = _option(ServerConfig, "max_request_items", min=1),
        drain_timeout_s: float = _option(ServerConfig, "drain_timeout_s", min=0),
        auth: str = _option(FinOpsConfig, "auth"),
        store: str = typer.Option(DEFAULT_STORE, "--store", help="the keys and ledger: a SQLite file or "
                                                                 "postgresql://...; 'none': no ledger (no --auth "
                                                                 "keys, no budgets)"),
        budget_timezone: str = _option(FinOpsConfig, "budget_timezone"),
        cache_max_bytes: int = typer.Option(64 * 1024 * 1024, "--cache-max-bytes", min=0,
                                            help=FinOpsConfig.model_fields["cache_max_bytes"].description),
        cache_ttl_s: float = _option(FinOpsConfig, "cache_ttl_s", min=0.001),
        route: list[str] = typer.Option(None, "--route", help=FinOpsConfig.model_fields["routes"].description),
        alert_webhook: str = typer.Option(None, "--alert-webhook", help="POST spend and budget alerts (JSON) here"),
        shared_state: bool = typer.Option(False, "--shared-state/--own-state",
                                          help=FinOpsConfig.model_fields["shared_state"].description
                                          + " (--ray implies it)"),
        cache_store_text: bool = _option(FinOpsConfig, "cache_store_text"),
        metrics_auth: str = _option(FinOpsConfig, "metrics_auth"),
        spend_report: str = typer.Option(None, "--spend-report", help=FinOpsConfig.model_fields["spend_report"]
                                         .description + ": daily or weekly"),
        ledger_retention_days: int = _option(FinOpsConfig, "ledger_retention_days", min=35),
        ray: bool = typer.Option(False, "--ray", help="serve on Ray Serve: replicas, each with its own engines, "
                                                      "behind Ray's HTTP proxy on --host/--port (needs "
                                                      "leaninfer[ray]; docs/scale-out.md)"),
        address: str = _option(RayOptions, "address"),
        replicas: int = _option(RayOptions, "replicas", min=1),
        min_replicas: int = _option(RayOptions, "min_replicas", min=0),
        max_replicas: int = _option(RayOptions, "max_replicas", min=1),
        target_ongoing_requests: float = _option(RayOptions, "target_ongoing_requests", min=0.001),
        replica_cpus: float = _option(RayOptions, "replica_cpus", min=0.001),
        replica_gpus: float = _option(RayOptions, "replica_gpus", min=0),
        max_ongoing_requests: int = _option(RayOptions, "max_ongoing_requests", min=1),
        max_queued_requests: int = _option(RayOptions, "max_queued_requests", min=-1),
        replica_metrics_port: int = _option(RayOptions, "replica_metrics_port", min=0, max=65535),
    ):
        """Serve models behind an OpenAI-compatible API with dynamic/continuous batching and metering."""
        import uvicorn

        models = list(models or [])
        upstreams = [parse_upstream(u) for u in upstream or []]
        if not models and not upstreams:
            raise LeaninferError("nothing to serve: give model references, or --upstream NAME=URL,tariff=FILE")
        if ray and upstreams:
            raise LeaninferError("--upstream is not served on --ray yet: run a front `leaninfer serve --upstream "
                                 "...` beside the Ray deployment")
        names = list(name or [])
        if len(names) > len(models):
            raise LeaninferError(f"{len(names)} --name values for {len(models)} models")
        names += [derive_name(m) for m in models[len(names):]]
        if len(set(names)) != len(names):
            raise LeaninferError(f"served names must be unique, got {valid_list(names)}: use --name")
        price = resolve_usd_per_hour(hardware, usd_per_hour)
        batching = BatchingConfig(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                                  max_batch_tokens=max_batch_tokens, prefill_chunk_tokens=prefill_chunk_tokens,
                                  lanes=lanes, max_queue=max_queue,
                                  max_queue_tokens=max_queue_tokens)
        cfg = ServerConfig(batching=batching, usd_per_hour=price, request_timeout_s=request_timeout_s,
                           max_body_bytes=max_body_bytes, max_request_chars=max_request_chars,
                           max_request_items=max_request_items, drain_timeout_s=drain_timeout_s,
                           upstreams=upstreams,
                           finops=FinOpsConfig(auth=auth, store=None if store.lower() == "none" else store,
                                               budget_timezone=budget_timezone, cache_max_bytes=cache_max_bytes,
                                               cache_ttl_s=cache_ttl_s, routes=list(route or []),
                                               alert_webhook=alert_webhook, shared_state=shared_state,
                                               cache_store_text=cache_store_text, metrics_auth=metrics_auth,
                                               spend_report=spend_report,
                                               ledger_retention_days=ledger_retention_days))
        if ray:
            require_ray()
            opts = RayOptions(address=address, replicas=replicas, min_replicas=min_replicas,
                              max_replicas=max_replicas, target_ongoing_requests=target_ongoing_requests,
                              replica_cpus=replica_cpus, replica_gpus=replica_gpus,
                              max_ongoing_requests=max_ongoing_requests, max_queued_requests=max_queued_requests,
                              replica_metrics_port=replica_metrics_port)
            console.print(f"deploying {', '.join(names)} on Ray Serve (each replica loads the models)")
            serve_until_signal(dict(zip(names, models, strict=True)), device, cfg, opts, host, port,
                               on_ready=lambda: console.print(f"serving on http://{host}:{port}/v1 via Ray Serve; "
                                                              "Ctrl-C or SIGTERM stops it"))
            return
        loaded = {}
        for n, ref in zip(names, models, strict=True):
            console.print(f"loading {ref} as {n!r}")
            loaded[n] = load(ref, device=device)
        app_ = create_app(loaded, cfg)
        app_.state.gate.claim()  # before listening: a second server on this store is refused with a reason
        console.print(f"serving {', '.join(names + [u.name for u in upstreams])} on http://{host}:{port}/v1  "
                      f"(batch {max_batch_size}, wait {max_wait_ms} ms, ${price}/h)")
        for u in app_.state.upstreams.values():
            console.print(f"upstream {u.name!r}: {u.config.url} (model {u.model_id!r}, {u.task}); "
                          f"{u.tariff.basis()}; key: {'$' + u.config.key_env if u.config.key_env else 'none'}")
        f = cfg.finops
        console.print(f"auth: {f.auth}" + (" (open: anyone who can reach this address may use it and nothing "
                                           "caps their spend; use --auth keys to require keys)" if f.auth == "none"
                                           else "") + f"; ledger: {f.store or 'off'}; cache: "
                      + (f"{f.cache_max_bytes} bytes, ttl {f.cache_ttl_s:g} s" if f.cache_max_bytes else "off")
                      + "".join(f"; route {r}" for r in f.routes))
        server = DrainingServer(uvicorn.Config(app_, host=host, port=port, log_level="warning",
                                               timeout_graceful_shutdown=drain_timeout_s), app_, drain_timeout_s)
        server.run()
        if not server.started:  # the port was taken, say; uvicorn has said why
            raise typer.Exit(3)
        if not server.clean:
            raise typer.Exit(1)
