"""Spike and budget alerts, driven through simulated minutes by a fake clock (no sleeping, no network)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from leaninfer.finops.alerts import AlertEvent, PrometheusSink, SpendWatch, SpikeConfig, WebhookSink, log_sink
from leaninfer.finops.money import to_nano

T0 = 1_700_000_040.0  # a minute boundary (divisible by 60)


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _watch(**cfg):
    events: list[AlertEvent] = []
    clock = Clock()
    watch = SpendWatch([events.append], clock=clock, config=SpikeConfig(**cfg) if cfg else None)
    return watch, clock, events


def _minute(watch, clock, tokens_per_request: int, requests: int = 10, key="k1", team="search", model="minilm",
            usd_per_token: float = 0.0):
    """One simulated minute of traffic: ``requests`` requests spread over it, then the clock moves on."""
    start = clock.t
    for i in range(requests):
        clock.t = start + i * 60 / requests
        watch.observe(key, team, model, tokens_per_request, to_nano(tokens_per_request * usd_per_token))
    clock.t = start + 60
    watch.tick()


def test_steady_traffic_fires_nothing():
    watch, clock, events = _watch()
    for _ in range(30):
        _minute(watch, clock, 500, usd_per_token=1e-6)  # 5,000 tokens and $0.005 a minute, every minute
    assert events == []
    assert watch.active() == []


def test_a_10x_burst_fires_once_per_entity_within_two_minutes_then_resolves():
    watch, clock, events = _watch()
    for _ in range(10):
        _minute(watch, clock, 500, usd_per_token=1e-6)
    burst_start = clock.t
    for _ in range(3):
        _minute(watch, clock, 5000, usd_per_token=1e-6)  # 10x tokens and $
    triggered = [e for e in events if e.state == "triggered"]
    # tokens and $ spike together: one event per entity (key, team, model), not one per metric
    assert sorted((e.entity_kind, e.entity) for e in triggered) == [("key", "k1"), ("model", "minilm"),
                                                                  ("team", "search")]
    assert all(e.kind == "spike" and e.at - burst_start <= 120 for e in triggered)
    key_event = next(e for e in triggered if e.entity_kind == "key")
    assert key_event.metric in ("tokens_per_min", "usd_per_min")
    assert key_event.team == "search"
    tokens_event = next(e for e in triggered if e.entity_kind == "team")
    if tokens_event.metric == "tokens_per_min":
        assert tokens_event.value == 50_000 and tokens_event.baseline == pytest.approx(5_000)
    assert "search" in tokens_event.message and "spiked" in tokens_event.message
    assert sorted(watch.active()) == [("key", "k1"), ("model", "minilm"), ("team", "search")]
    for _ in range(3):
        _minute(watch, clock, 500, usd_per_token=1e-6)
    resolved = [e for e in events if e.state == "resolved"]
    assert len(resolved) == 3 and all(e.at == burst_start + 4 * 60 for e in resolved)
    assert watch.active() == []
    assert len([e for e in events if e.state == "triggered"]) == 3  # the burst's 3 minutes fired once


def test_watching_teams_only_gives_exactly_one_event_for_a_burst():
    watch, clock, events = _watch(entity_kinds=["team"])
    for _ in range(10):
        _minute(watch, clock, 500)
    _minute(watch, clock, 5000)
    assert [(e.state, e.entity_kind, e.entity, e.metric) for e in events] == [
        ("triggered", "team", "search", "tokens_per_min")]


def test_burst_below_the_minimum_volume_fires_nothing():
    watch, clock, events = _watch(min_tokens_per_min=1000)
    for _ in range(10):
        _minute(watch, clock, 5, requests=2)  # 10 tokens a minute
    _minute(watch, clock, 50, requests=2)  # 10x, but 100 tokens a minute
    assert events == []


def test_cooldown_two_bursts_three_minutes_apart_fire_once():
    watch, clock, events = _watch(cooldown_s=600)
    for _ in range(10):
        _minute(watch, clock, 500)
    _minute(watch, clock, 5000)
    for _ in range(2):
        _minute(watch, clock, 500)
    _minute(watch, clock, 5000)  # 3 minutes after the first burst
    for _ in range(2):
        _minute(watch, clock, 500)
    assert [(e.state, e.entity_kind) for e in events if e.entity_kind == "team"] == [
        ("triggered", "team"), ("resolved", "team")]
    # past the cooldown, a third burst fires again: the swallowed one didn't inflate the baseline
    for _ in range(10):
        _minute(watch, clock, 500)
    _minute(watch, clock, 5000)
    assert [e.state for e in events if e.entity_kind == "team"] == ["triggered", "resolved", "triggered"]


def test_warmup_no_event_before_enough_history():
    watch, clock, events = _watch(warmup_minutes=5)
    for _ in range(3):
        _minute(watch, clock, 500)
    _minute(watch, clock, 5000)
    assert events == []


def test_quiet_night_then_burst_fires_and_the_spiking_minute_stays_out_of_the_baseline():
    watch, clock, events = _watch(entity_kinds=["team"], cooldown_s=0)  # no cooldown to hide a re-trigger
    for _ in range(10):
        _minute(watch, clock, 500)
    clock.t += 8 * 3600  # eight hours of nothing: zeros decay the baseline
    watch.tick()
    _minute(watch, clock, 300)  # 3,000 tokens: below the day's level, far above the night's
    assert [(e.state, e.metric) for e in events] == [("triggered", "tokens_per_min")]
    assert events[0].baseline < 1
    # a long burst stays one active alert: its minutes don't become the baseline
    for _ in range(5):
        _minute(watch, clock, 300)
    assert [e.state for e in events] == ["triggered"] and watch.active() == [("team", "search")]


def test_burst_minutes_do_not_move_the_baseline():
    watch, clock, events = _watch(entity_kinds=["team"])
    for _ in range(10):
        _minute(watch, clock, 500)
    for _ in range(3):
        _minute(watch, clock, 5000)
    _minute(watch, clock, 500)
    assert [(e.state, e.baseline) for e in events] == [("triggered", pytest.approx(5000)),
                                                       ("resolved", pytest.approx(5000))]


def test_a_level_held_for_max_active_minutes_becomes_the_new_normal():
    watch, clock, events = _watch(entity_kinds=["team"], max_active_minutes=5)
    for _ in range(10):
        _minute(watch, clock, 500)
    for _ in range(8):
        _minute(watch, clock, 5000)
    assert [e.state for e in events] == ["triggered", "resolved"]
    assert "new baseline" in events[1].message and watch.active() == []


def test_budget_thresholds_fire_once_each_and_rearm_in_a_new_window():
    watch, clock, events = _watch()
    day1, day2 = T0, T0 + 86_400
    for ratio in (0.1, 0.49, 0.5, 0.6, 0.79, 0.81, 0.9, 0.99, 1.0, 1.2):
        watch.budget_used("k1", "search", "usd_day", ratio, window_start=day1)
    assert [(e.kind, e.state, e.threshold, e.metric, e.entity) for e in events] == [
        ("budget", "triggered", 0.5, "usd_day", "k1"), ("budget", "triggered", 0.8, "usd_day", "k1"),
        ("budget", "triggered", 1.0, "usd_day", "k1")]
    assert events[1].value == 0.81 and "81%" in events[1].message and "search" in events[1].message
    events.clear()
    watch.budget_used("k1", "search", "usd_day", 0.55, window_start=day2)
    assert [(e.state, e.threshold) for e in events] == [("resolved", 1.0), ("triggered", 0.5)]
    events.clear()
    watch.budget_used("k1", "search", "tokens_day", 0.95, window_start=day2)  # a jump past two: the highest
    watch.budget_used("k2", "ads", "usd_day", 0.5, window_start=day2)  # another key has its own thresholds
    assert [(e.entity, e.metric, e.threshold) for e in events] == [("k1", "tokens_day", 0.8),
                                                                    ("k2", "usd_day", 0.5)]


def test_no_key_entity_when_auth_is_off():
    watch, clock, events = _watch()
    for _ in range(10):
        _minute(watch, clock, 500, key=None)
    _minute(watch, clock, 5000, key=None)
    assert sorted(e.entity_kind for e in events) == ["model", "team"]


def test_a_failing_sink_does_not_break_observe(caplog):
    def broken(event):
        raise RuntimeError("sink down")

    got = []
    watch = SpendWatch([broken, got.append], clock=Clock())
    with caplog.at_level(logging.ERROR, logger="leaninfer.finops"):
        watch.budget_used("k1", "t", "usd_day", 0.5, window_start=0.0)
    assert len(got) == 1 and "sink" in caplog.text


def test_config_rejects_bad_values_naming_them():
    with pytest.raises(ValidationError, match="factor"):
        SpikeConfig(factor=1.0)
    with pytest.raises(ValidationError, match="unknown entity kind.*'user'.*key, team, model"):
        SpikeConfig(entity_kinds=["user"])
    assert all(f.description for f in SpikeConfig.model_fields.values())


def test_log_sink_writes_one_line(caplog):
    ev = AlertEvent("spike", "triggered", "team", "search", "tokens_per_min", 50_000.0, T0, "team 'search' spiked",
                    baseline=5_000.0)
    with caplog.at_level(logging.INFO, logger="leaninfer.finops"):
        log_sink(ev)
    assert [(r.name, r.levelname) for r in caplog.records] == [("leaninfer.finops", "WARNING")]
    assert "team 'search' spiked" in caplog.records[0].getMessage()


@pytest.fixture
def webhook_server():
    """A local HTTP server (127.0.0.1, an ephemeral port) that records the JSON bodies posted to it."""
    received: list[dict] = []
    got = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "content_type": self.headers["Content-Type"],
                             "json": json.loads(body)})
            got.set()  # before answering: once the sink has its answer, the test sees the request
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received, got
    server.shutdown()
    server.server_close()


def test_webhook_sink_posts_the_event_json(webhook_server):
    url, received, got = webhook_server
    sink = WebhookSink(url + "/hook")
    watch, clock, events = _watch(entity_kinds=["team"])
    watch.sinks.append(sink)
    for _ in range(10):
        _minute(watch, clock, 500)
    _minute(watch, clock, 5000)
    sink.close(timeout_s=10)
    assert got.is_set() and len(received) == 1
    doc = received[0]
    assert doc["path"] == "/hook" and doc["content_type"] == "application/json"
    assert doc["json"] == events[0].to_dict()
    assert {"kind", "state", "entity_kind", "entity", "metric", "value", "baseline", "threshold", "at",
            "message"} <= doc["json"].keys()
    assert doc["json"]["kind"] == "spike" and doc["json"]["entity"] == "search"


def test_webhook_failures_are_logged_not_raised(caplog):
    sink = WebhookSink("http://127.0.0.1:9/nothing-listens", timeout_s=1)  # port 9 (discard): refused
    ev = AlertEvent("budget", "triggered", "key", "k1", "usd_day", 0.5, T0, "m", threshold=0.5)
    with caplog.at_level(logging.WARNING, logger="leaninfer.finops"):
        sink(ev)  # returns at once
        sink.close(timeout_s=10)
    assert "alert webhook" in caplog.text and "failed" in caplog.text


def test_webhook_queue_full_drops_with_a_log_line(caplog):
    gate = threading.Event()
    sink = WebhookSink("http://127.0.0.1:9/x", timeout_s=1, max_queue=1)
    sink._client.post = lambda *a, **k: gate.wait(10)  # a webhook that hangs until released
    ev = AlertEvent("budget", "triggered", "key", "k1", "usd_day", 0.5, T0, "m", threshold=0.5)
    with caplog.at_level(logging.WARNING, logger="leaninfer.finops"):
        for _ in range(5):
            sink(ev)  # never blocks, however slow the webhook
    gate.set()
    sink.close(timeout_s=10)
    assert "dropped" in caplog.text


def test_prometheus_sink_counts_and_flags_active_alerts():
    registry = CollectorRegistry()
    watch, clock, events = _watch(entity_kinds=["team", "key"])
    watch.sinks.append(PrometheusSink(registry))

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    for _ in range(10):
        _minute(watch, clock, 500)
    _minute(watch, clock, 5000)
    team = {"entity_kind": "team", "entity": "search", "kind": "spike"}
    assert value("leaninfer_spend_alerts_total", **team) == 1
    assert value("leaninfer_spend_alert_active", **team) == 1
    assert value("leaninfer_spend_alert_active", entity_kind="key", entity="k1", kind="spike") == 1
    _minute(watch, clock, 500)
    assert value("leaninfer_spend_alert_active", **team) == 0
    assert value("leaninfer_spend_alerts_total", **team) == 1
    watch.budget_used("k1", "search", "usd_day", 0.85, window_start=0.0)
    watch.budget_used("k1", "search", "tokens_day", 0.5, window_start=0.0)
    budget = {"entity_kind": "key", "entity": "k1", "kind": "budget"}
    assert value("leaninfer_spend_alert_active", **budget) == 0.8  # the highest level over its budgets
    assert value("leaninfer_spend_alerts_total", **budget) == 2
    watch.budget_used("k1", "search", "usd_day", 0.1, window_start=86_400.0)
    assert value("leaninfer_spend_alert_active", **budget) == 0.5
