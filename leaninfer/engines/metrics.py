"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

Constant labels (``const_labels``, e.g. ``{"replica": ...}`` in each Ray Serve replica) are added to every
series at render time, FinOps series included (they share the registry), so single-machine ``/metrics`` is
unchanged when there are none and nothing that observes a metric needs to know about them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Every series the issue names, labelled by model (and endpoint/status for requests)."""

    def __init__(self, const_labels: dict[str, str] | None = None):
        self.const_labels = dict(const_labels or {})
        r = self.registry = CollectorRegistry()
        self.requests = Counter("leaninfer_requests_total", "HTTP requests by model, endpoint and status",
                                ["model", "endpoint", "status"], registry=r)
        self.errors = Counter("leaninfer_request_errors_total", "requests answered with an error, by type",
                              ["model", "endpoint", "status", "type"], registry=r)
        self.input_tokens = Counter("leaninfer_input_tokens_total", "prompt tokens processed", ["model"], registry=r)
        self.output_tokens = Counter("leaninfer_output_tokens_total", "tokens generated", ["model"], registry=r)
        self.ttft = Histogram("leaninfer_time_to_first_token_seconds", "time to first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("leaninfer_inter_token_latency_seconds", "time between generated tokens", ["model"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("leaninfer_e2e_latency_seconds", "request latency, arrival to last byte",
                             ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("leaninfer_queue_time_seconds", "time waiting before the engine took it",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("leaninfer_batch_size", "rows per model call (embedding batch, decode step)",
                                    ["model", "kind"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("leaninfer_queue_depth", "requests waiting for the engine", ["model"], registry=r)
        self.running = Gauge("leaninfer_running_requests", "requests in the engine's running batch", ["model"],
                             registry=r)
        self.busy_seconds = Counter("leaninfer_engine_busy_seconds_total", "engine time spent in model calls",
                                    ["model"], registry=r)
        self.call_seconds = Counter("leaninfer_engine_call_seconds_total",
                                    "wall time of model calls, summed over calls (with embedding lanes calls overlap: "
                                    "busy seconds / call seconds is the mean share of the machine a call held)",
                                    ["model"], registry=r)
        self.utilization = Gauge("leaninfer_engine_utilization", "busy fraction of the engine, last 60 s",
                                 ["model"], registry=r)
        self.cancelled = Counter("leaninfer_cancelled_requests_total",
                                 "requests whose client went away before the response was complete (their engine "
                                 "work is stopped)", ["model"], registry=r)
        self.server_errors = Counter("leaninfer_server_errors_total",
                                     "server errors (5xx), including an error reported inside a started stream",
                                     ["endpoint", "status"], registry=r)
        self.engine_up = Gauge("leaninfer_engine_up", "1 while the model's engine thread runs, 0 once it died",
                               ["model"], registry=r)
        self.graph_captures = Gauge("leaninfer_decode_graph_captures", "CUDA graphs the decode slot pool has "
                                    "captured (at start-up; again only if its capacity doubled)", ["model"],
                                    registry=r)
        self.cost = Counter("leaninfer_cost_usd_total", "engine cost of served requests (busy time x price)",
                            ["model"], registry=r)

    def count_request(self, model: str, endpoint: str, status: int, err_type: str | None = None) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(model, endpoint, str(status), err_type or "error").inc()
        if status >= 500:
            self.server_errors.labels(endpoint, str(status)).inc()
        if status == 499:  # the client left before its answer (a stream's hang-up is counted where it ends)
            self.cancelled.labels(model).inc()

    def observe_embedding(self, model: str, n_tokens: int, meter) -> None:
        """An answered embeddings request (``meter``: its :class:`~leaninfer.engines.engine.Meter`)."""
        self.input_tokens.labels(model).inc(n_tokens)
        self.queue_time.labels(model).observe(meter.queue_s)
        self.cost.labels(model).inc(meter.to_dict()["cost_usd"])

    def observe_generation(self, model: str, n_prompt: int, n_out: int, meter) -> None:
        """A finished (or stopped) generation: its tokens (``n_out``: of all its ``n`` sequences), latencies
        and cost. Inter-token latency is not here: the engine observes it per token, as tokens come."""
        self.input_tokens.labels(model).inc(n_prompt)
        self.output_tokens.labels(model).inc(n_out)
        self.queue_time.labels(model).observe(meter.queue_s)
        if meter.ttft_s is not None:
            self.ttft.labels(model).observe(meter.ttft_s)
        self.cost.labels(model).inc(meter.to_dict()["cost_usd"])

    def collectable(self):
        """What to hand an exporter (``generate_latest``, ``start_http_server``): the registry, with the
        constant labels added when there are any."""
        return _Labelled(self.registry, self.const_labels) if self.const_labels else self.registry

    def render(self) -> bytes:
        return generate_latest(self.collectable())


class _Labelled:
    """A registry's families with constant labels added to every sample (what ``generate_latest`` reads)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        self.registry, self.labels = registry, labels

    def collect(self):
        for family in self.registry.collect():  # fresh Metric objects on every collect: safe to rewrite
            family.samples = [s._replace(labels={**self.labels, **s.labels}) for s in family.samples]
            yield family
