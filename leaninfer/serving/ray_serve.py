"""``leaninfer serve --ray``: the same FastAPI app (:func:`~leaninfer.serving.app.create_app`) on Ray Serve.

Design note. One Serve deployment whose replicas each load every served model and build their own app with
``create_app``, so each replica has its own engines: dynamic and continuous batching stay inside the replica,
and Ray only routes whole requests to replicas (``max_ongoing_requests`` per replica, at least a batch, so a
batch can fill). The app is late-bound (``@serve.ingress()`` with ``__serve_build_asgi_app__``, Ray >= 2.50):
it is built inside the replica process after the models are loaded, and Ray runs the app's ASGI lifespan
there (uvicorn's ``LifespanOn``): startup starts the engines and FinOps (ledger writer, calibration) before
the replica takes traffic, and replica shutdown (after Ray's graceful wait for open requests) runs the
lifespan's exit, which drains the engines and flushes the ledger. Nothing here re-implements what Ray does:
routing, restarts, autoscaling and backpressure are Ray Serve's.

What we add around Ray: a ``replica`` label on every Prometheus series of a replica (and an
``X-Leaninfer-Replica`` response header), a per-replica ``/metrics`` listener on ``--replica-metrics-port`` +
the replica's rank on its node (Ray's proxy sends ``/metrics`` to one replica at a time, so a scraper needs
each replica's own), and a proxy middleware that turns Ray's plain-text backpressure 503 into the
OpenAI-shaped body the single-machine server sends.

``ray`` is an optional extra: it is imported inside the functions that need it, never at module level.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import start_http_server
from pydantic import BaseModel, ConfigDict, Field

from ..errors import LeaninferError
from ..models import load
from .app import create_app
from .state import ServerConfig

log = logging.getLogger("leaninfer.serving")

APP_NAME = "leaninfer"
DEPLOYMENT_NAME = "leaninfer"
REPLICA_HEADER = "x-leaninfer-replica"
RETRY_AFTER_S = 1  # what the single-machine server says on a full queue (engine.queue_full)
INSTALL_HINT = "pip install 'leaninfer[ray]'"


class RayOptions(BaseModel):
    """How ``leaninfer serve --ray`` deploys (flags carry the field names)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="Ray cluster to join ('auto': the one `ray start` started on "
                                                  "this node; ray://host:10001 for a remote one); default: start a "
                                                  "local one")
    replicas: int | None = Field(None, ge=1, description="fixed number of replicas (default 1, unless autoscaling)")
    min_replicas: int | None = Field(None, ge=0, description="autoscaling: fewest replicas")
    max_replicas: int | None = Field(None, ge=1, description="autoscaling: most replicas")
    target_ongoing_requests: float | None = Field(None, gt=0, description="autoscaling: requests in flight per "
                                                                           "replica to aim for (default: the "
                                                                           "batch size)")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica (it also sets the "
                                                       "replica's thread count: OMP_NUM_THREADS)")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractions share one GPU)")
    max_ongoing_requests: int | None = Field(None, ge=1, description="requests one replica holds at once (default "
                                                                     "2x --max-batch-size; at least the batch size, "
                                                                     "so a batch can fill)")
    max_queued_requests: int | None = Field(None, ge=-1, description="requests waiting in Ray's router for a "
                                                                     "replica before a 503 + Retry-After (default "
                                                                     "--max-queue; -1: unbounded)")
    replica_metrics_port: int = Field(9500, ge=0, le=65535, description="each replica serves its own /metrics on "
                                                                        "this port + its rank on the node; 0: off")


def require_ray() -> None:
    """Raise a clear :class:`LeaninferError` when Ray Serve isn't installed (``leaninfer[ray]``)."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise LeaninferError(f"--ray needs Ray Serve, which is not importable here ({e}): {INSTALL_HINT}") from None


def deployment_options(opts: RayOptions, config: ServerConfig, device: str = "cpu") -> dict:
    """``serve.deployment`` keyword arguments for ``opts``, refusing combinations that can't work.

    Example:
        >>> deployment_options(RayOptions(replicas=2), ServerConfig())["num_replicas"]
        2
    """
    batch = config.batching.max_batch_size
    autoscale = {k: v for k, v in (("--min-replicas", opts.min_replicas), ("--max-replicas", opts.max_replicas),
                                   ("--target-ongoing-requests", opts.target_ongoing_requests)) if v is not None}
    if autoscale and opts.replicas is not None:
        raise LeaninferError(f"--replicas {opts.replicas} is a fixed count; {', '.join(autoscale)} ask for "
                             "autoscaling: give one or the other")
    max_ongoing = opts.max_ongoing_requests if opts.max_ongoing_requests is not None else 2 * batch
    if max_ongoing < batch:
        raise LeaninferError(f"--max-ongoing-requests {max_ongoing} is below --max-batch-size {batch}: a replica "
                             f"would never hold a full batch; use >= {batch} (default {2 * batch})")
    queued = opts.max_queued_requests if opts.max_queued_requests is not None else config.batching.max_queue
    if queued == 0:
        raise LeaninferError("--max-queued-requests 0 would refuse every request that finds all replicas busy; "
                             "use >= 1, or -1 for unbounded")
    if device.startswith("cuda") and opts.replica_gpus <= 0:
        raise LeaninferError(f"--device {device} needs --replica-gpus > 0: Ray hides GPUs from replicas that "
                             "don't reserve one")
    d = {
        "max_ongoing_requests": max_ongoing,
        "max_queued_requests": queued,
        "ray_actor_options": {"num_cpus": opts.replica_cpus, "num_gpus": opts.replica_gpus},
        # Ray waits this long for a stopping replica's open requests, then runs its lifespan exit (the drain)
        "graceful_shutdown_timeout_s": max(config.drain_timeout_s, 1.0),
        "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
    }
    if autoscale:
        lo = opts.min_replicas if opts.min_replicas is not None else 1
        hi = opts.max_replicas if opts.max_replicas is not None else max(lo, 1)
        if hi < lo:
            raise LeaninferError(f"--max-replicas {hi} is below --min-replicas {lo}")
        target = opts.target_ongoing_requests if opts.target_ongoing_requests is not None else float(batch)
        if target > max_ongoing:
            raise LeaninferError(f"--target-ongoing-requests {target:g} is above --max-ongoing-requests "
                                 f"{max_ongoing}: replicas could never reach it")
        d["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": target}
    else:
        d["num_replicas"] = opts.replicas or 1
    return d


def shipped_config(config: ServerConfig) -> ServerConfig:
    """The config every replica gets: unchanged, but FinOps state goes through the store (several replicas),
    and a SQLite store path is made absolute (a replica's working directory is not the caller's)."""
    finops = config.finops.model_copy(update={"shared_state": True})
    store = finops.store
    if store is not None and "://" not in store:
        finops = finops.model_copy(update={"store": str(Path(store).expanduser().resolve())})
    return config.model_copy(update={"finops": finops})


def resolve_refs(refs: dict[str, str]) -> dict[str, str]:
    """Local artifact directories as absolute paths (replicas don't share the caller's working directory)."""
    return {n: str(Path(r).resolve()) if Path(r).exists() else r for n, r in refs.items()}


# -- in each replica -------------------------------------------------------------------------------------------
class ReplicaHeader:
    """ASGI middleware: every response names the replica that answered (``X-Leaninfer-Replica``)."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


class Replica:
    """What runs in each Ray Serve replica (wrapped by ``serve.ingress()`` in :func:`build_app`): loads the
    models in the replica's process, then builds the app there, so each replica has its own engines."""

    def __init__(self, refs: dict[str, str], device: str, config: ServerConfig, metrics_host: str,
                 metrics_port: int):
        self.config, self.metrics_host, self.metrics_port = config, metrics_host, metrics_port
        self.models = {name: load(ref, device=device) for name, ref in refs.items()}

    def __serve_build_asgi_app__(self):
        from ray import serve

        ctx = serve.get_replica_context()
        replica = ctx.replica_tag
        app = create_app(self.models, self.config)
        app.state.metrics.const_labels = {"replica": replica}
        app.state.replica = replica
        app.add_middleware(ReplicaHeader, replica=replica)
        if self.metrics_port:
            rank = getattr(ctx.rank, "local_rank", 0) or 0
            _serve_metrics_alongside(app, self.metrics_host, self.metrics_port + rank)
        return app


def _serve_metrics_alongside(app, host: str, port: int) -> None:
    """Serve the replica's ``/metrics`` (the same text as the app's) on ``host:port`` from the app's lifespan."""
    inner = app.router.lifespan_context
    metrics = app.state.metrics

    @asynccontextmanager
    async def lifespan(a):
        try:
            server, _ = start_http_server(port, addr=host, registry=metrics.collectable())
        except OSError as e:  # the port is taken: the replica still serves; only this scrape target is missing
            log.warning("replica metrics port %d not available (%s): scrape it through the proxy instead", port, e)
            server = None
        try:
            async with inner(a):
                yield
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()

    app.router.lifespan_context = lifespan


# -- at Ray's proxy ------------------------------------------------------------------------------------------
# Ray 2.60 refuses ``HTTPOptions.middlewares``; the proxy still takes middlewares from the function named by
# this environment variable, read when the proxy process starts: it must be in the environment of the process
# that starts Ray (``leaninfer serve --ray`` sets it for the cluster it starts; export it before `ray start`).
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "leaninfer.serving.ray_serve.proxy_middlewares"


def proxy_middlewares() -> list:
    """The middlewares of Ray Serve's HTTP proxy (named by :data:`PROXY_CALLBACK_ENV`)."""
    from starlette.middleware import Middleware

    return [Middleware(OpenAIRejections)]


class OpenAIRejections:
    """Proxy middleware: Ray's own rejections (backpressure 503, unavailable 503, timeout 408), which Ray
    answers in plain text before any replica sees the request, leave with the OpenAI-shaped body the
    single-machine server sends (``{"error": {"message", "type", "param", "code"}}``); headers (Retry-After)
    are kept. Responses from the app are JSON already and pass untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict = {}

        async def rewrite(message):
            if message["type"] == "http.response.start" and message["status"] in (408, 429, 503) and \
                    _content_type(message).startswith(b"text/plain") and scope["path"] not in ("/-/healthz",
                                                                                           "/-/routes"):
                held["start"] = message
                return
            if "start" in held and message["type"] == "http.response.body":
                held.setdefault("body", bytearray()).extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                start = held.pop("start")
                body = _openai_body(start["status"], bytes(held.pop("body")).decode("utf-8", "replace"))
                headers = [(k, v) for k, v in start.get("headers", [])
                           if k.lower() not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def _content_type(start: dict) -> bytes:
    return next((v.lower() for k, v in start.get("headers", []) if k.lower() == b"content-type"), b"")


def _openai_body(status: int, text: str) -> bytes:
    if status == 408:
        err = {"message": text or "request timed out", "type": "timeout", "param": None, "code": "timeout"}
    elif "backpressure" in text:
        err = {"message": f"all replicas are busy and Ray's queue is full ({text}): retry later",
               "type": "server_overloaded", "param": None, "code": "queue_full"}
    else:
        err = {"message": text or "service unavailable", "type": "server_unavailable", "param": None,
               "code": "unavailable"}
    return json.dumps({"error": err}).encode()


# -- deploying -----------------------------------------------------------------------------------------------
def build_app(refs: dict[str, str], device: str, config: ServerConfig, opts: RayOptions, host: str = "127.0.0.1"):
    """The Serve application (``Deployment.bind(...)``) for ``refs`` (served name -> reference); replicas'
    metrics listeners bind ``host``."""
    from ray import serve

    cls = serve.ingress()(Replica)
    dep = serve.deployment(name=DEPLOYMENT_NAME, **deployment_options(opts, config, device))(cls)
    return dep.bind(resolve_refs(refs), device, shipped_config(config), host, opts.replica_metrics_port)


def deploy(refs: dict[str, str], device: str, config: ServerConfig, opts: RayOptions, host: str = "127.0.0.1",
           port: int = 8000) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and deploy (Ray must be initialized); returns once every
    replica is up (its models loaded and its lifespan started)."""
    from ray import serve

    app = build_app(refs, device, config, opts, host)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as e:  # a replica failed to start (bad reference, out of memory): Ray says why
        raise LeaninferError(f"the Ray Serve deployment failed to start: {e}") from None


def serve_until_signal(refs: dict[str, str], device: str, config: ServerConfig, opts: RayOptions, host: str,
                       port: int, on_ready=None) -> None:
    """``leaninfer serve --ray``: join (or start) a Ray cluster, deploy, serve until SIGTERM/SIGINT, then shut
    Serve down (each replica drains: Ray waits for its open requests, then its lifespan stops the engines)."""
    import ray
    from ray import serve

    deployment_options(opts, config, device)  # refuse bad flags before starting anything
    stop = threading.Event()
    started_ray = not ray.is_initialized()
    if started_ray:
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)  # inherited by the proxy of a local cluster
        # "local": a new cluster for this command, never silently one that `ray start` left on this node
        ray.init(address=opts.address or "local", include_dashboard=False, logging_level=logging.WARNING)
    # after ray.init: its core worker installs a C-level SIGTERM handler that aborts the process (exit -6)
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        deploy(refs, device, config, opts, host, port)
        if on_ready is not None:
            on_ready()
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        try:
            serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
