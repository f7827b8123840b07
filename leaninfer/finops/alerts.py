"""Spend alerts: a spike against each entity's own rolling baseline, and budget thresholds at 50/80/100%.

:class:`SpendWatch` is fed every settled request and emits :class:`AlertEvent` s to sinks (a log line, a JSON
webhook, Prometheus series). It is pure apart from its injected clock: no thread, no timer, so a test drives
it through simulated hours in microseconds. The server calls :meth:`SpendWatch.tick` every few seconds so a
minute closes even when no request comes.

Design of the spike detector, per entity (a key, a team, a model):

- Tokens and $ are bucketed per calendar minute (of the clock). When a minute closes, each metric's value is
  compared with an EWMA baseline of the entity's earlier minutes. Minutes without traffic count as zeros:
  after a quiet night the baseline is near zero and a burst stands out.
- Triggered: some metric is >= ``factor`` x its baseline and >= its minimum volume (so a key going from 1 to
  10 tokens a minute is not an incident), after ``warmup_minutes`` of history.
- One alert state per entity, not per metric: a burst raises tokens and $ together and fires once. The event
  names the metric that spiked most.
- Resolved, with hysteresis: when every metric is back below ``resolve_ratio`` x the trigger level (or
  below the minimum volume scaled the same way), so a value hovering at the threshold doesn't flap.
- The spiking minutes are kept out of the baseline (else a long burst would become its own baseline and
  resolve itself while still burning money). A level that stays high for ``max_active_minutes`` is taken as
  the new normal: the alert resolves and the baseline restarts from it.
- Cooldown: after a trigger, the entity doesn't fire again for ``cooldown_s``; minutes that would have fired
  meanwhile are kept out of the baseline too. Two bursts a few minutes apart are one incident.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .money import to_usd

log = logging.getLogger("leaninfer.finops")

ENTITY_KINDS = ("key", "team", "model")
METRICS = ("tokens_per_min", "usd_per_min")
BUDGET_THRESHOLDS = (0.5, 0.8, 1.0)

AlertSink = Callable[["AlertEvent"], None]


@dataclass(frozen=True)
class AlertEvent:
    """One alert event. ``baseline`` is set for a spike, ``threshold`` for a budget (0.5, 0.8 or 1.0)."""

    kind: str  # spike | budget
    state: str  # triggered | resolved
    entity_kind: str  # key | team | model | scope (a budget above the key: entity is its scope id)
    entity: str
    metric: str  # tokens_per_min | usd_per_min | a budget name such as usd_day
    value: float
    at: float  # unix seconds
    message: str
    baseline: float | None = None
    threshold: float | None = None
    team: str = ""  # the team of a key or team entity ("" for a model)

    def to_dict(self) -> dict:
        return asdict(self)


class SpikeConfig(BaseModel):
    """When a minute of spend counts as a spike. Every entity (key, team, model) has its own baseline.

    Example:
        >>> SpikeConfig(factor=5).min_tokens_per_min
        1000
    """

    model_config = ConfigDict(extra="forbid")

    factor: float = Field(4.0, gt=1, description="a minute spikes when it is at least this many times the "
                                                 "entity's baseline")
    alpha: float = Field(0.2, gt=0, le=1, description="EWMA weight of the newest minute in the baseline "
                                                      "(0.2: the baseline follows roughly the last 10 minutes)")
    min_tokens_per_min: int = Field(1000, ge=0, description="a minute below this many tokens never spikes "
                                                            "on tokens")
    min_usd_per_min: float = Field(0.01, ge=0, description="a minute below this many $ never spikes on $")
    cooldown_s: float = Field(600.0, ge=0, description="after a trigger, the same entity does not fire again "
                                                       "for this long")
    warmup_minutes: int = Field(3, ge=1, description="minutes of history an entity needs before it can "
                                                     "spike")
    resolve_ratio: float = Field(0.5, gt=0, le=1, description="resolved when every metric is below this "
                                                              "fraction of its trigger level (hysteresis)")
    max_active_minutes: int = Field(60, ge=1, description="a spike lasting this long is taken as the new "
                                                          "normal: resolved, and the baseline restarts from it")
    entity_kinds: list[str] = Field(list(ENTITY_KINDS), description="which entities are watched: key, team, "
                                                                    "model")

    @model_validator(mode="after")
    def _kinds(self):
        bad = [k for k in self.entity_kinds if k not in ENTITY_KINDS]
        if bad:
            raise ValueError(f"unknown entity kind(s) {bad}; valid: {', '.join(ENTITY_KINDS)}")
        return self


@dataclass
class _Entity:
    """The spike state of one entity."""

    baseline: list[float] = field(default_factory=lambda: [0.0, 0.0])  # per METRICS, tokens and $
    minutes: int = 0  # minutes of history in the baseline
    active: bool = False
    active_minutes: int = 0
    metric: int = 0  # index in METRICS of the metric that triggered
    last_trigger_at: float = -math.inf
    team: str = ""


class SpendWatch:
    """Spike and budget alerts from settled requests. Thread-safe; sinks are called outside its lock.

    Example:
        >>> events = []
        >>> watch = SpendWatch([events.append], clock=lambda: 0.0)
        >>> watch.observe("k1", "search", "minilm", tokens=120, nusd=3_000)
        >>> watch.budget_used("k1", "search", "usd_day", 0.85, window_start=0.0)
        >>> [(e.kind, e.threshold) for e in events]
        [('budget', 0.8)]
    """

    def __init__(self, sinks: Iterable[AlertSink], clock: Callable[[], float] = time.time,
                 config: SpikeConfig | None = None):
        self.sinks = list(sinks)
        self.clock = clock
        self.config = config or SpikeConfig()
        self._lock = threading.Lock()
        self._minute: int | None = None  # the open minute (unix minute number)
        self._bucket: dict[tuple[str, str], list[int]] = {}  # (entity_kind, entity) -> [tokens, nusd]
        self._entities: dict[tuple[str, str], _Entity] = {}
        self._budgets: dict[tuple[str, str, str], tuple[float, float]] = {}  # (kind, entity, budget) -> (window, top fired)

    # -- feeding ----------------------------------------------------------------------------------------------
    def observe(self, key_id: str | None, team: str, model: str, tokens: int, nusd: int) -> None:
        """Count one settled request (``nusd``: its cost in nano-dollars). ``key_id`` is None with auth off."""
        names = {"key": key_id, "team": team, "model": model}
        with self._lock:
            events = self._advance(self.clock())
            for kind in self.config.entity_kinds:
                if names[kind]:
                    b = self._bucket.setdefault((kind, names[kind]), [0, 0])
                    b[0] += int(tokens)
                    b[1] += int(nusd)
                    if kind == "key":
                        self._entities.setdefault((kind, names[kind]), _Entity()).team = team
        self._emit(events)

    def tick(self) -> None:
        """Close the minute if it is over (the server calls this every few seconds)."""
        with self._lock:
            events = self._advance(self.clock())
        self._emit(events)

    def budget_used(self, key_id: str, team: str, budget_name: str, used_ratio: float,
                    window_start: float, entity_kind: str = "key") -> None:
        """Report that ``key_id`` has used ``used_ratio`` of its budget ``budget_name`` (e.g. ``usd_day``) in
        the window that started at ``window_start``. Each threshold fires once per window; a jump past
        several fires the highest only. The first report in a new window re-arms the thresholds (and
        resolves the previous window's alert). ``entity_kind="scope"``: ``key_id`` is a budget above the key,
        by its scope id (``team:search``)."""
        now = self.clock()
        events = []
        with self._lock:
            k = (entity_kind, key_id, budget_name)
            window, fired = self._budgets.get(k, (window_start, 0.0))
            if window != window_start:
                if fired:
                    events.append(_budget_event("resolved", key_id, team, budget_name, used_ratio, fired, now,
                                                entity_kind))
                fired = 0.0
            crossed = [t for t in BUDGET_THRESHOLDS if used_ratio >= t and t > fired]
            if crossed:
                fired = crossed[-1]
                events.append(_budget_event("triggered", key_id, team, budget_name, used_ratio, fired, now,
                                            entity_kind))
            self._budgets[k] = (window_start, fired)
        self._emit(events)

    def active(self) -> list[tuple[str, str]]:
        """The ``(entity_kind, entity)`` pairs whose spike alert is active now."""
        with self._lock:
            return sorted(k for k, e in self._entities.items() if e.active)

    # -- the minute clock -------------------------------------------------------------------------------------
    def _advance(self, now: float) -> list[AlertEvent]:
        minute = int(now // 60)
        if self._minute is None:
            self._minute = minute
        if minute <= self._minute:
            return []
        events = self._close(self._minute, self._bucket)
        self._bucket = {}
        gap = minute - self._minute - 1  # minutes nobody spent in: zeros for everyone
        if gap:
            events += self._close(self._minute + 1, {})  # resolves any spike still active
            if gap > 1:
                self._decay(gap - 1)
        self._minute = minute
        return events

    def _decay(self, n: int) -> None:
        """``n`` more zero minutes at once (a quiet night): the closed form of n EWMA steps toward 0."""
        keep = (1 - self.config.alpha) ** n
        for e in self._entities.values():
            e.baseline = [b * keep for b in e.baseline]
            e.minutes += n

    def _close(self, minute: int, bucket: dict[tuple[str, str], list[int]]) -> list[AlertEvent]:
        cfg = self.config
        at = (minute + 1) * 60.0
        mins = (float(cfg.min_tokens_per_min), float(cfg.min_usd_per_min))
        events = []
        for k in bucket:
            self._entities.setdefault(k, _Entity())
        for k, e in self._entities.items():
            tokens, nusd = bucket.get(k, (0, 0))
            values = (float(tokens), to_usd(nusd))
            if e.minutes == 0:  # the first minute seen starts the baseline
                e.baseline = list(values)
                e.minutes = 1
                continue
            if e.active:
                level = cfg.resolve_ratio
                still = [v >= level * cfg.factor * b and v >= level * m and v > 0
                         for v, b, m in zip(values, e.baseline, mins, strict=True)]
                e.active_minutes += 1
                if not any(still) or e.active_minutes >= cfg.max_active_minutes:
                    e.active = False
                    new_normal = any(still)
                    if new_normal:
                        e.baseline = list(values)
                    events.append(_spike_event("resolved", k, e, values[e.metric], at, new_normal))
                continue  # a spiking minute stays out of the baseline
            spiking = [v >= cfg.factor * b and v >= m and v > 0
                       for v, b, m in zip(values, e.baseline, mins, strict=True)]
            if any(spiking) and e.minutes >= cfg.warmup_minutes:
                if at - e.last_trigger_at >= cfg.cooldown_s:
                    e.active, e.active_minutes, e.last_trigger_at = True, 0, at
                    e.metric = max((i for i in range(len(METRICS)) if spiking[i]),
                                   key=lambda i: values[i] / e.baseline[i] if e.baseline[i] else math.inf)
                    events.append(_spike_event("triggered", k, e, values[e.metric], at))
                continue  # fired, or swallowed by the cooldown: either way not baseline material
            e.baseline = [b + cfg.alpha * (v - b) for v, b in zip(values, e.baseline, strict=True)]
            e.minutes += 1
        return events

    def _emit(self, events: list[AlertEvent]) -> None:
        for ev in events:
            for sink in self.sinks:
                try:
                    sink(ev)
                except Exception:  # a broken sink must never break the request that settled
                    log.exception("alert sink %r failed on %s", sink, ev.kind)


def _fmt(metric: str, v: float) -> str:
    return f"${v:,.4f}/min" if metric == "usd_per_min" else f"{v:,.0f} tokens/min"


def _spike_event(state: str, k: tuple[str, str], e: _Entity, value: float, at: float,
                 new_normal: bool = False) -> AlertEvent:
    kind, name = k
    metric = METRICS[e.metric]
    base = e.baseline[e.metric]
    who = f"{kind} {name!r}" + (f" (team {e.team!r})" if kind == "key" and e.team else "")
    if state == "triggered":
        times = f"{value / base:.1f}x" if base else "from a zero baseline"
        msg = f"{who} spend spiked: {_fmt(metric, value)} against a baseline of {_fmt(metric, base)} ({times})"
    elif new_normal:
        msg = f"{who} has spent {_fmt(metric, value)} for a while: taken as its new baseline"
    else:
        msg = f"{who} spend back to normal: {_fmt(metric, value)} (baseline {_fmt(metric, base)})"
    team = e.team if kind == "key" else name if kind == "team" else ""
    return AlertEvent("spike", state, kind, name, metric, value, at, msg, baseline=base, team=team)


def _budget_event(state: str, key_id: str, team: str, budget: str, ratio: float, threshold: float,
                  at: float, entity_kind: str = "key") -> AlertEvent:
    whose = f"key {key_id!r} (team {team!r})" if entity_kind == "key" else f"budget {key_id!r}"
    if state == "triggered":
        msg = f"{whose} has used {ratio:.0%} of its {budget} budget (threshold {threshold:.0%})"
    else:
        msg = f"{whose}: a new {budget} window started, budget alerts re-armed"
    return AlertEvent("budget", state, entity_kind, key_id, budget, ratio, at, msg, threshold=threshold, team=team)


# -- sinks --------------------------------------------------------------------------------------------------
def log_sink(event: AlertEvent) -> None:
    """One line on the ``leaninfer.finops`` logger: WARNING when triggered, INFO when resolved."""
    level = logging.WARNING if event.state == "triggered" else logging.INFO
    log.log(level, "%s alert %s: %s", event.kind, event.state, event.message)


class WebhookSink:
    """POST each event's JSON (:meth:`AlertEvent.to_dict`) to ``url`` from a daemon thread.

    The caller never waits: events go through a bounded queue, and when it is full (the webhook is down or
    slow) new events are dropped with a log line rather than piling up in memory. A failed POST is logged,
    never raised. :meth:`close` sends what is queued, waiting at most ``timeout_s``.
    """

    def __init__(self, url: str, timeout_s: float = 5.0, max_queue: int = 1000, headers: dict | None = None):
        import httpx

        self.url = url
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.failed = 0  # POSTs that failed or were refused (a one-shot sender reports it)
        self._thread = threading.Thread(target=self._run, name="leaninfer-alert-webhook", daemon=True)
        self._thread.start()

    def __call__(self, event: AlertEvent) -> None:
        try:
            self._queue.put_nowait(event.to_dict())
        except queue.Full:
            log.warning("alert webhook %s is behind (%d events queued): dropped %s %s of %s %r", self.url,
                        self._queue.maxsize, event.kind, event.state, event.entity_kind, event.entity)

    def send(self, doc: dict, what: str) -> bool:
        """Queue any JSON document (a spend report, say) for the same thread; False (logged) when it is full."""
        try:
            self._queue.put_nowait(doc)
            return True
        except queue.Full:
            log.warning("alert webhook %s is behind (%d events queued): dropped %s", self.url,
                        self._queue.maxsize, what)
            return False

    def _run(self) -> None:
        while True:
            doc = self._queue.get()
            if doc is None:
                return
            try:
                r = self._client.post(self.url, content=json.dumps(doc),
                                      headers={"Content-Type": "application/json"})
                if r.status_code >= 400:
                    log.warning("alert webhook %s answered %d", self.url, r.status_code)
                    self.failed += 1
            except Exception as e:  # the webhook's trouble is not the server's: say so and go on
                log.warning("alert webhook %s failed: %s", self.url, e)
                self.failed += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (waiting at most ``timeout_s``), then stop the thread."""
        deadline = time.monotonic() + timeout_s
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("alert webhook %s: %d events not sent at close", self.url, self._queue.qsize())
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self._client.close()


class PrometheusSink:
    """Alert series on ``registry``:

    - ``leaninfer_spend_alerts_total{entity_kind,entity,kind}``: triggered events;
    - ``leaninfer_spend_alert_active{entity_kind,entity,kind}``: for ``kind="spike"`` 1 while active, else 0;
      for ``kind="budget"`` the highest threshold crossed in the current window (0.5, 0.8, 1.0; 0 re-armed).

    Cardinality is that of keys, teams and models: all bounded by what the operator created.
    """

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge

        labels = ["entity_kind", "entity", "kind"]
        self.total = Counter("leaninfer_spend_alerts_total", "spend alerts triggered (spike or budget threshold)",
                             labels, registry=registry)
        self.active = Gauge("leaninfer_spend_alert_active", "spike: 1 while the alert is active; budget: the "
                            "highest threshold crossed in the current window", labels, registry=registry)

        self._budget_levels: dict[str, dict[str, float]] = {}  # key -> {budget name: threshold crossed}
        self._lock = threading.Lock()  # sinks are called from whichever thread settled the request

    def __call__(self, event: AlertEvent) -> None:
        labels = (event.entity_kind, event.entity, event.kind)
        if event.state == "triggered":
            self.total.labels(*labels).inc()
        if event.kind == "spike":
            self.active.labels(*labels).set(1.0 if event.state == "triggered" else 0.0)
            return
        # a key has several budgets (usd_day, tokens_month...) but one series: it shows the highest level
        with self._lock:
            levels = self._budget_levels.setdefault(event.entity, {})
            levels[event.metric] = event.threshold if event.state == "triggered" else 0.0
            self.active.labels(*labels).set(max(levels.values()))
