"""Spend reports: the figures against the ledger (exact sums, top lists, the period before, budget burn,
savings), the Slack incoming-webhook shape checked against Slack's documented Block Kit limits, hostile labels
escaped, one report per period across replicas, the webhook POST, the CLI and the serve flag's checks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from leaninfer.cli import app
from leaninfer.errors import LeaninferError
from leaninfer.finops.alerts import WebhookSink
from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.gate import Gate
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.money import to_nano
from leaninfer.finops.spend_report import (
    build,
    next_run,
    period,
    schedule,
    send_due,
    send_once,
    slack_message,
)
from leaninfer.finops.store import open_store

UTC = ZoneInfo("UTC")
NOW = 1764979200.0 + 9 * 3600  # 2025-12-06 09:00 UTC, a Saturday
DAY = 86_400.0
YESTERDAY = 1764979200.0 - DAY  # 2025-12-05 00:00 UTC
HOSTILE = "<!channel> *boss* `x` & <https://evil|click>"


# -- Slack's documented limits (Block Kit reference: blocks, section, header, context; incoming webhooks) ----------
def check_slack_message(msg: dict) -> None:
    """Raise AssertionError where ``msg`` breaks what Slack documents for a message with blocks."""
    assert set(msg) <= {"text", "blocks"}, msg.keys()
    assert isinstance(msg["text"], str) and 0 < len(msg["text"]) <= 40_000  # the fallback, also in notifications
    blocks = msg["blocks"]
    assert isinstance(blocks, list) and 0 < len(blocks) <= 50
    for b in blocks:
        kind = b["type"]
        assert kind in {"header", "section", "context", "divider"}, kind
        if "block_id" in b:
            assert len(b["block_id"]) <= 255
        if kind == "header":
            assert set(b) <= {"type", "text", "block_id"}
            assert b["text"]["type"] == "plain_text" and 0 < len(b["text"]["text"]) <= 150
        elif kind == "section":
            assert "text" in b or "fields" in b, b
            if "text" in b:
                _check_text(b["text"], 3000)
            if "fields" in b:
                assert 0 < len(b["fields"]) <= 10
                for f in b["fields"]:
                    _check_text(f, 2000)
        elif kind == "context":
            assert 0 < len(b["elements"]) <= 10
            for e in b["elements"]:
                _check_text(e, 3000)


def _check_text(t: dict, limit: int) -> None:
    assert t["type"] in {"mrkdwn", "plain_text"}, t
    assert isinstance(t["text"], str) and 0 < len(t["text"]) <= limit, len(t["text"])
    if t["type"] == "mrkdwn":
        # no raw control sequences: a mention (<!channel>), link (<url|x>) or user (<@U1>) can't be injected
        assert "<" not in t["text"] and ">" not in t["text"], t["text"]


def _row(i: int, created_at: float, team: str, key_id: str, workflow: str, nusd: int, **kw) -> LedgerRow:
    return LedgerRow(f"r{i}-{created_at}", created_at, created_at + 0.1, "embeddings", "minilm", served_model="minilm",
                     key_id=key_id, team=team, workflow=workflow, input_tokens=10, output_tokens=5, charged_tokens=15,
                     cost_nusd=nusd, cost_input_nusd=nusd, duration_s=0.1, **kw)


@pytest.fixture
def ledger(tmp_path):
    path = str(tmp_path / "l.db")
    s = open_store(path)
    s.add_key(KeyRecord("aaaaaaaaaaaa", "h1", KeyPolicy(team="search", name="ci bot", budget_usd_day=1.0,
                                                        budget_tokens_month=1000), 0.0))
    s.add_key(KeyRecord("bbbbbbbbbbbb", "h2", KeyPolicy(team="ads"), 0.0))
    rows = []
    for i in range(4):  # yesterday: search $0.20 each, 2 with a hostile workflow; ads $0.05
        rows.append(_row(i, YESTERDAY + 3600 * (i + 1), "search", "aaaaaaaaaaaa", HOSTILE if i < 2 else "nightly",
                         to_nano(0.2)))
    rows.append(_row(9, YESTERDAY + 7200, "ads", "bbbbbbbbbbbb", "", to_nano(0.05), cache="hit",
                     cache_saved_nusd=to_nano(0.01)))
    rows.append(_row(10, YESTERDAY + 7300, "ads", "bbbbbbbbbbbb", "", to_nano(0.03), routing_saved_nusd=to_nano(0.02)))
    rows.append(_row(11, YESTERDAY - 3600, "search", "aaaaaaaaaaaa", "", to_nano(0.5)))  # the day before
    rows.append(_row(12, NOW - 60, "search", "aaaaaaaaaaaa", "", to_nano(7.0)))  # today: not in the report
    s.append(rows)
    s.close()
    return path


def test_figures_are_the_ledgers(ledger):
    s = open_store(ledger)
    try:
        r = build(s, "daily", "UTC", now=NOW)
    finally:
        s.close()
    assert r["period"]["label"] == "2025-12-05" and r["period"]["start"] == YESTERDAY
    assert r["totals"]["spend_usd"] == pytest.approx(0.88, abs=1e-12) and r["totals"]["requests"] == 6
    assert r["totals"]["tokens"] == 6 * 15
    assert r["previous"]["spend_usd"] == pytest.approx(0.5, abs=1e-12)
    assert [(t["name"], t["spend_usd"]) for t in r["teams"]] == [("search", pytest.approx(0.8)),
                                                                ("ads", pytest.approx(0.08))]
    assert r["keys"][0]["name"] == "aaaaaaaaaaaa" and r["keys"][0]["label"] == "ci bot"
    assert [w["name"] for w in r["workflows"]] == [HOSTILE, "nightly"]
    assert r["savings"] == {"cache_usd": pytest.approx(0.01), "routing_usd": pytest.approx(0.02), "cache_hits": 1}
    burn = {b["budget"]: b for b in r["budgets"]}
    # the day budget: what the key spent in the reported day (not today's $7); the month's: up to the report's end
    assert burn["usd_day"]["used"] == pytest.approx(0.8) and burn["usd_day"]["ratio"] == pytest.approx(0.8)
    assert burn["tokens_month"]["used"] == 5 * 15 and r["budgets"][0]["budget"] == "usd_day"


def test_the_message_fits_slacks_limits_and_escapes_labels(ledger):
    s = open_store(ledger)
    try:
        msg = slack_message(build(s, "daily", "UTC", now=NOW))
    finally:
        s.close()
    check_slack_message(msg)
    text = json.dumps(msg)
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text and "<https" not in text
    assert "$0.88" in msg["text"] and "+76% vs the period before" in msg["text"]
    burn = next(b["text"]["text"] for b in msg["blocks"] if b.get("text", {}).get("text", "").startswith("*Budget"))
    assert ":warning: `ci bot` usd_day: $0.80 of $1.00 (80%)" in burn


def test_many_long_labels_still_fit(tmp_path):
    s = open_store(str(tmp_path / "l.db"))
    try:
        s.append([_row(i, YESTERDAY + i, f"team-{i:03d}-" + "x" * 50, None, ("w" * 60) + str(i) + "<>&" * 1,
                       to_nano(0.001 * (i + 1))) for i in range(300)])
        for i in range(200):
            s.add_key(KeyRecord(f"{i:012x}", "h", KeyPolicy(team="t", name="n" * 128, budget_usd_total=1e-9), 0.0))
        msg = slack_message(build(s, "weekly", "UTC", now=NOW + 3 * DAY))  # Tuesday: the week before
    finally:
        s.close()
    check_slack_message(msg)
    assert msg["blocks"][0]["text"]["text"].endswith("2025-12-01 to 2025-12-07")


def test_periods_and_the_next_run():
    start, end, prev, label = period("weekly", NOW, UTC)  # Saturday 2025-12-06: the week of Nov 24
    assert (label, end - start, start - prev) == ("2025-11-24 to 2025-11-30", 7 * DAY, 7 * DAY)
    assert next_run("daily", NOW, UTC) == YESTERDAY + 2 * DAY
    assert next_run("weekly", NOW, UTC) == YESTERDAY + 3 * DAY  # Monday 2025-12-08
    berlin = ZoneInfo("Europe/Berlin")  # a day across the DST change is 23 hours
    s, e, _, lbl = period("daily", 1774828800.0 + 12 * 3600, berlin)  # 2026-03-30 12:00 UTC
    assert lbl == "2026-03-29" and e - s == 23 * 3600


class _Hook(BaseHTTPRequestHandler):
    got: list = []
    status = 200

    def do_POST(self):  # noqa: N802
        self.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    _Hook.got, _Hook.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", _Hook
    finally:
        server.shutdown()


def test_replicas_on_one_store_send_each_report_once(ledger, hook):
    url, got = hook
    a, b = open_store(ledger), open_store(ledger)
    sink = WebhookSink(url)
    try:
        assert send_due(a, sink, "daily", "UTC", now=NOW) is True
        assert send_due(b, sink, "daily", "UTC", now=NOW) is False
        assert send_due(a, sink, "daily", "UTC", now=NOW + DAY) is True  # the next day's
    finally:
        sink.close()
        a.close()
        b.close()
    assert len(got.got) == 2
    for msg in got.got:
        check_slack_message(msg)


def test_one_shot_report_posts_and_says_when_the_webhook_refuses(ledger, hook):
    url, got = hook
    s = open_store(ledger)
    try:
        sent = send_once(s, "weekly", "UTC", url)
        assert got.got == [sent]
        got.status = 500
        with pytest.raises(LeaninferError, match="did not take the weekly spend report"):
            send_once(s, "weekly", "UTC", url)
    finally:
        s.close()


def test_cli(ledger, hook):
    url, got = hook
    runner = CliRunner()
    r = runner.invoke(app, ["usage", "--store", ledger, "--report", "daily", "--print"])
    assert r.exit_code == 0, r.output
    check_slack_message(json.loads(r.stdout))
    r = runner.invoke(app, ["usage", "--store", ledger, "--report", "daily", "--webhook", url])
    assert r.exit_code == 0, r.output
    assert len(got.got) == 1
    for bad, words in ((["--report", "hourly", "--print"], "unknown spend report 'hourly'"),
                       (["--report", "daily"], "--webhook URL")):
        r = runner.invoke(app, ["usage", "--store", ledger, *bad])
        assert r.exit_code != 0 and words in r.output, r.output


def test_serve_flag_needs_a_webhook_and_a_store(tmp_path):
    with pytest.raises(LeaninferError, match="--spend-report needs --alert-webhook"):
        Gate(FinOpsConfig(store=str(tmp_path / "l.db"), spend_report="daily"), {})
    with pytest.raises(ValueError, match="spend_report"):
        FinOpsConfig(store="x.db", alert_webhook="http://h", spend_report="hourly")


def test_the_schedule_sends_at_the_periods_end_once(ledger, hook):
    """The serve loop with a clock standing at a midnight: it sends the report of the day that ended, and on
    its next turns (the same period) the claim keeps it from sending again."""
    url, got = hook
    s = open_store(ledger)
    sink = WebhookSink(url)
    almost = next_run("daily", time.time(), UTC) - 0.5  # half a second before a midnight

    async def run():
        task = asyncio.create_task(schedule(s, sink, "daily", "UTC", clock=lambda: almost))
        await asyncio.sleep(4.0)  # turns of 1.5 s each: the first sends, the next find the report claimed
        task.cancel()

    try:
        asyncio.run(run())
    finally:
        sink.close()
        s.close()
    assert len(got.got) == 1
    check_slack_message(got.got[0])
