"""The ledger at scale: rollups kept equal to their rows, reports summed in SQL identical to the Python report,
reports from rollups, retention in batches, the CloudEvents export, and the indexes the queries use."""

from __future__ import annotations

import io
import json
import random
import sqlite3
import time

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from leaninfer.cli import app
from leaninfer.errors import LeaninferError
from leaninfer.finops import export as export_mod
from leaninfer.finops import usage_sql
from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.ledger import LEDGER_FIELDS, LedgerRow
from leaninfer.finops.ledger_writer import LedgerWriter
from leaninfer.finops.retention import Retention, cutoff, prune
from leaninfer.finops.rollups import COLUMNS, DAY_S, deltas
from leaninfer.finops.store import open_store
from leaninfer.finops.store.ledger_schema import TEAM_COLUMNS
from leaninfer.finops.store.schema import migrations, statements
from leaninfer.finops.store.sqlite import SQLiteDialect
from leaninfer.finops.usage import usage_payload, usage_report

from .store_fixtures import store_url  # noqa: F401

DAY1 = 1740787200.0  # 2025-03-01T00:00:00Z
# DST in New York starts on 2025-03-09 (02:00 local): the range crosses it
SPAN_DAYS = 12


def random_rows(rng: random.Random, n: int, start: int = 0, t0: float = DAY1) -> list[LedgerRow]:
    rows = []
    for i in range(start, start + n):
        t = t0 + rng.random() * SPAN_DAYS * DAY_S
        status = rng.choice([200] * 8 + [429, 500])
        served = "" if status == 429 else rng.choice(["minilm", "gpt2-int8", "gpt2"])
        rows.append(LedgerRow(
            request_id=f"r{i}", created_at=t, finished_at=t + 1, endpoint=rng.choice(["embeddings", "completions"]),
            requested_model=rng.choice(["minilm", "chat"]), served_model=served,
            key_id=rng.choice(["k1", "k2", "k3", None]), team=rng.choice(["search", "ads", ""]),
            workflow=rng.choice(["rag", "tagging", ""]), input_tokens=rng.randrange(500),
            output_tokens=rng.randrange(100), charged_tokens=rng.randrange(600), cost_nusd=rng.randrange(10**9),
            duration_s=rng.choice([0.0, 0.0004, 0.001, 0.02, 0.3, 1.7, 25.0, 900.0, rng.random() * 3]),
            status=status, cache=rng.choice(["hit", "miss", "off"]), cache_saved_nusd=rng.randrange(1000),
            routing_saved_nusd=rng.randrange(1000), tags={"env": rng.choice(["prod", "dev"])},
            end_user=rng.choice(["alice", "bob", ""])))
    return rows


def rollup_table(store) -> dict[tuple, tuple]:
    def read(sql, db):
        return db.execute(f"SELECT {', '.join(COLUMNS)} FROM ledger_daily").fetchall()
    out = {}
    for values in store.ledger_read(read):
        values = tuple(float(v) if i == 0 else (int(v) if i >= 6 else v) for i, v in enumerate(values))
        if any(values[6:]):
            out[values[:6]] = values[6:]
    return out


def expected_rollups(rows) -> dict[tuple, tuple]:
    return {d[:6]: tuple(d[6:]) for d in deltas(rows)}


def team_table(store) -> dict[tuple, tuple]:
    """The team-level rollups (migration 9), each (day, team) with its sums."""
    def read(sql, db):
        return db.execute(f"SELECT {', '.join(TEAM_COLUMNS)} FROM ledger_team_daily").fetchall()
    return {(float(v[0]), v[1]): tuple(int(x) for x in v[2:]) for v in store.ledger_read(read) if any(v[2:])}


def expected_teams(rows) -> dict[tuple, tuple]:
    out: dict[tuple, list[int]] = {}
    for d in deltas(rows):
        acc = out.setdefault((d[0], d[1]), [0] * (len(d) - 6))
        for i, x in enumerate(d[6:]):
            acc[i] += x
    return {k: tuple(v) for k, v in out.items() if any(v)}


def _fill(store, rng, n=600):
    rows = random_rows(rng, n)
    for i in range(0, n, 97):
        store.append(rows[i:i + 97])
    # retried writes replace their rows (another cost, another day, another team): rollups follow
    again = random_rows(random.Random(7), 120)
    for r in again:
        r.request_id = f"r{rng.randrange(n)}"
    store.append(again[:60])
    for r in again[60:]:
        store.append([r])
    return store.rows()


def test_rollups_equal_the_rows_after_random_appends_and_replacements(store_url):  # noqa: F811
    store = open_store(store_url)
    try:
        rows = _fill(store, random.Random(1))
        assert len(rows) <= 600
        assert rollup_table(store) == expected_rollups(rows)
        assert team_table(store) == expected_teams(rows)  # the team-level rollups too
    finally:
        store.close()


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("period", [None, "day", "hour"])
def test_sql_report_is_identical_to_the_python_report(store_url, tz, period):  # noqa: F811
    store = open_store(store_url)
    try:
        rows = _fill(store, random.Random(2), 400)
        for by in (["team"], ["key_id", "model"], ["workflow", "endpoint", "team"], ["user", "team"], []):
            for since, until in ((None, None), (DAY1 + 3 * DAY_S + 1234.5, DAY1 + 9 * DAY_S)):
                p = usage_payload(store, by, period, since, until, tz)
                assert p["source"] == "rows"
                inside = [r for r in rows if (since is None or r.created_at >= since)
                          and (until is None or r.created_at < until)]
                assert p["groups"] == usage_report(inside, by, period, tz)
                assert p["totals"] == usage_report(inside, [])[0]
    finally:
        store.close()


def test_reports_read_rollups_for_big_day_aligned_ranges_with_exact_sums(store_url, monkeypatch):  # noqa: F811
    store = open_store(store_url)
    try:
        rows = _fill(store, random.Random(3), 500)
        monkeypatch.setattr(usage_sql, "RAW_ROWS_MAX", 0)
        # by end user: the rollups have no such column, so the report is summed from the rows
        assert usage_payload(store, ["user"], "day", "2025-03-02", "2025-03-11", "UTC")["source"] == "rows"
        for by, period in ((["team"], "day"), (["key_id", "model", "workflow", "endpoint"], None), ([], "day")):
            p = usage_payload(store, by, period, "2025-03-02", "2025-03-11", "UTC")
            assert p["source"] == "rollups"
            inside = [r for r in rows if DAY1 + DAY_S <= r.created_at < DAY1 + 10 * DAY_S]
            exact = usage_report(inside, by, period, "UTC")
            assert [{k: v for k, v in g.items() if k != "p95_latency_s"} for g in p["groups"]] == \
                   [{k: v for k, v in g.items() if k != "p95_latency_s"} for g in exact]
            for got, want in zip(p["groups"], exact, strict=True):
                if want["p95_latency_s"] is None:
                    assert got["p95_latency_s"] is None
                elif want["p95_latency_s"] > 0.001:  # the histogram's relative error (under 1 ms: its first bucket)
                    assert got["p95_latency_s"] == pytest.approx(want["p95_latency_s"], rel=0.13)
        # not day-aligned, another zone, or hours: raw rows
        assert usage_payload(store, ["team"], "day", "2025-03-02T01:00", None, "UTC")["source"] == "rows"
        assert usage_payload(store, ["team"], "day", None, None, "Europe/Berlin")["source"] == "rows"
        assert usage_payload(store, ["team"], "hour", None, None, "UTC")["source"] == "rows"
    finally:
        store.close()


def test_an_old_store_is_migrated_with_its_rollups_backfilled_in_sql(tmp_path):
    path = tmp_path / "old.db"
    rows = random_rows(random.Random(4), 300)
    db = sqlite3.connect(path, isolation_level=None)
    for script in migrations(SQLiteDialect.types)[:4]:
        for s in statements(script):
            db.execute(s)
    db.execute("PRAGMA user_version = 4")
    old = [f for f in LEDGER_FIELDS if f != "end_user"]  # the columns of a version 4 ledger
    db.executemany(f"INSERT INTO ledger ({', '.join(old)}) VALUES ({', '.join('?' * len(old))})",
                   [tuple(json.dumps(getattr(r, f), sort_keys=True) if f == "tags" else getattr(r, f) for f in old)
                    for r in rows])
    db.close()
    store = open_store(path)
    try:
        assert rollup_table(store) == expected_rollups(rows)
        assert team_table(store) == expected_teams(rows)
        assert store.spend("k1", 0.0) == (sum(r.cost_nusd for r in rows if r.key_id == "k1"),
                                           sum(r.charged_tokens for r in rows if r.key_id == "k1"))
        # the spend buckets were backfilled for every scope (tags exploded from the rows' JSON)
        since = DAY1 + 3 * DAY_S + 1234.5
        for account, member in (("team:search@1", lambda r: r.team == "search"), ("org@1", lambda r: True),
                                ("model:chat@1", lambda r: r.requested_model == "chat"),
                                ("tag:env=prod@1", lambda r: r.tags.get("env") == "prod"),
                                ("k2", lambda r: r.key_id == "k2")):
            assert store.budget_spend(account, since) == (
                sum(r.cost_nusd for r in rows if member(r) and r.created_at >= since),
                sum(r.charged_tokens for r in rows if member(r) and r.created_at >= since)), account
    finally:
        store.close()


def test_retention_deletes_only_old_rows_in_batches_and_keeps_rollups_reports_and_spend(store_url):  # noqa: F811
    store = open_store(store_url)
    try:
        rows = _fill(store, random.Random(5), 500)
        before = DAY1 + 6 * DAY_S
        rollups = rollup_table(store)
        old_report = usage_payload(store, ["team", "key_id"], "day", None, "2025-03-07", "UTC")
        spend = {k: store.spend(k, 0.0) for k in ("k1", "k2", "k3")}
        calls = []
        real = store.prune
        store.prune = lambda b, limit: calls.append(limit) or real(b, limit)
        n = prune(store, before, batch=37, pause_s=0)
        old = [r for r in rows if r.created_at < before]
        assert n == len(old) and len(calls) == len(old) // 37 + 1 and set(calls) == {37}
        assert sorted(r.request_id for r in store.rows()) == sorted(r.request_id for r in rows if r.created_at >= before)
        assert rollup_table(store) == rollups
        new_report = usage_payload(store, ["team", "key_id"], "day", None, "2025-03-07", "UTC")
        assert new_report["source"] == "rollups"
        strip = [{k: v for k, v in g.items() if k != "p95_latency_s"} for g in old_report["groups"]]
        assert [{k: v for k, v in g.items() if k != "p95_latency_s"} for g in new_report["groups"]] == strip
        # a key's whole-life spend (the "total" budget window) still counts the deleted rows
        assert {k: store.spend(k, 0.0) for k in spend} == spend
        assert store.budget_used("k1", [("usd_total", 0.0)]) == {"usd_total": (spend["k1"][0], 0)}
        # a day window after the cut reads rows only
        day = DAY1 + 8 * DAY_S
        assert store.spend("k2", day) == (sum(r.cost_nusd for r in rows if r.key_id == "k2" and r.created_at >= day),
                                          sum(r.charged_tokens for r in rows if r.key_id == "k2" and
                                              r.created_at >= day))
        # a row written again after the cut (a retried write) lands in its rollup, and is counted once
        late = random_rows(random.Random(9), 1, start=10_000, t0=DAY1)[0]
        late.created_at, late.key_id = DAY1 + 3600, "k1"
        store.append([late])
        assert store.spend("k1", 0.0)[0] == spend["k1"][0] + late.cost_nusd
    finally:
        store.close()


def test_retention_refuses_short_periods_and_cuts_at_a_utc_midnight():
    with pytest.raises(LeaninferError, match="at least 35"):
        cutoff(DAY1, 7)
    assert cutoff(DAY1 + 40 * DAY_S + 5, 35) == DAY1 + 5 * DAY_S
    with pytest.raises(ValueError, match="UTC midnight"):
        prune(None, DAY1 + 5)


def test_retention_thread_prunes_and_stops(tmp_path):
    store = open_store(tmp_path / "l.db")
    rows = random_rows(random.Random(6), 200)
    store.append(rows)
    now = DAY1 + 40 * DAY_S
    r = Retention(store, 35, every_s=3600, batch=50, pause_s=0, clock=lambda: now)
    try:
        for _ in range(200):
            if r.deleted:
                break
            time.sleep(0.02)
    finally:
        r.close()
    gone = [x for x in rows if x.created_at < DAY1 + 5 * DAY_S]
    assert r.deleted == len(gone) and len(store.rows()) == len(rows) - len(gone)
    store.close()


def test_export_writes_one_valid_cloudevent_per_row_across_pages(store_url, monkeypatch):  # noqa: F811
    store = open_store(store_url)
    try:
        rows = _fill(store, random.Random(8), 300)
        # equal times: the (created_at, request_id) pages must neither skip nor repeat them
        same = [LedgerRow(f"same{i}", DAY1 + 5 * DAY_S, DAY1, "embeddings", "m", key_id=None, team="t") for i in range(9)]
        store.append(same)
        rows += same
        monkeypatch.setattr(export_mod, "PAGE_ROWS", 7)
        buf = io.StringIO()
        n = export_mod.export(store, buf)
        lines = buf.getvalue().splitlines()
        assert n == len(lines) == len(rows)
        events = [json.loads(x) for x in lines]
        assert sorted(e["id"] for e in events) == sorted(r.request_id for r in rows)
        by_id = {r.request_id: r for r in rows}
        for e in events:
            assert e["specversion"] == "1.0" and e["type"] == "dev.leaninfer.request.metered"
            assert e["source"] and e["datacontenttype"] == "application/json"
            assert e["time"].endswith("Z") and e["subject"]
            assert e["data"] == json.loads(json.dumps(by_id[e["id"]].to_record()))
        assert [e["time"] for e in events] == sorted(e["time"] for e in events)
        assert next(e for e in events if e["id"] == "same0")["subject"] == "t"
        buf = io.StringIO()
        assert export_mod.export(store, buf, DAY1 + 2 * DAY_S, DAY1 + 3 * DAY_S) == \
            sum(DAY1 + 2 * DAY_S <= r.created_at < DAY1 + 3 * DAY_S for r in rows)
    finally:
        store.close()


def test_cli_export_to_a_file(tmp_path):
    path = tmp_path / "l.db"
    store = open_store(path)
    store.add_key(KeyRecord("k1", "h", KeyPolicy(team="search"), DAY1))
    rows = random_rows(random.Random(10), 50)
    store.append(rows)
    store.close()
    out = tmp_path / "events.jsonl"
    res = CliRunner().invoke(app, ["usage", "--store", str(path), "--export", "-o", str(out),
                                   "--since", "2025-03-03", "--until", "2025-03-05"])
    assert res.exit_code == 0, res.output
    want = sorted(r.request_id for r in rows if DAY1 + 2 * DAY_S <= r.created_at < DAY1 + 4 * DAY_S)
    assert sorted(json.loads(x)["id"] for x in out.read_text().splitlines()) == want
    assert "prompt" not in out.read_text()


def _plan(store, sql: str, args) -> str:
    def read(_, db):
        return " | ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall())
    return store.ledger_read(read)


def test_sqlite_queries_read_indexes_not_scans(tmp_path):
    store = open_store(tmp_path / "l.db")
    store.append(random_rows(random.Random(11), 50))
    try:
        # a budget window's first read: the scope's buckets by primary key, the partial quarter hour by an index
        buckets = _plan(store, store._q["bucket_spend"], ("team:search", DAY1))
        assert "spend_buckets" in buckets and "SCAN" not in buckets, buckets
        for kind, index in (("key", "ledger_key_spend"), ("team", "ledger_team_time"), ("model", "ledger_time_id"),
                            ("tag", "ledger_time_id"), ("user", "ledger_time_id")):
            raw = _plan(store, store._q["raw_spend_" + kind], (DAY1, DAY1 + 600, "x"))
            assert index in raw and "SCAN ledger " not in raw + " ", (kind, raw)
        raw = _plan(store, store._q["raw_spend_org"], (DAY1, DAY1 + 600))
        assert "ledger_time_id" in raw, raw
        rollups = _plan(store, "SELECT team, day, SUM(requests) FROM ledger_daily WHERE day >= ? AND day < ? "
                               "GROUP BY team, day", (DAY1, DAY1 + 30 * DAY_S))
        assert "SCAN ledger_daily" not in rollups, rollups
        page = _plan(store, "SELECT request_id FROM ledger WHERE (created_at, request_id) > (?, ?) "
                            "ORDER BY created_at, request_id LIMIT 5", (DAY1, "r1"))
        assert "ledger_time_id" in page and "TEMP B-TREE" not in page, page
        prune_plan = _plan(store, "DELETE FROM ledger WHERE request_id IN (SELECT request_id FROM ledger "
                                  "WHERE created_at < ? ORDER BY created_at LIMIT ?)", (DAY1, 10))
        assert "ledger_time_id" in prune_plan, prune_plan
    finally:
        store.close()


def test_a_report_in_another_zone_over_pruned_days_says_where_its_rows_start(tmp_path):
    store = open_store(tmp_path / "l.db")
    try:
        rows = random_rows(random.Random(12), 200)
        store.append(rows)
        prune(store, DAY1 + 4 * DAY_S, pause_s=0)
        p = usage_payload(store, ["team"], "day", None, None, "Europe/Berlin")
        assert p["source"] == "rows" and p["rows_since"] == DAY1 + 4 * DAY_S
        assert p["totals"]["requests"] == sum(r.created_at >= DAY1 + 4 * DAY_S for r in rows)
        assert "rows_since" not in usage_payload(store, ["team"], "day", None, None, "UTC")
    finally:
        store.close()


def test_the_serve_setting_needs_35_days_and_the_writer_runs_retention(tmp_path):
    with pytest.raises(ValidationError, match="35"):
        FinOpsConfig(ledger_retention_days=7)
    store = open_store(tmp_path / "l.db")
    writer = LedgerWriter(store, FinOpsConfig(ledger_retention_days=40).ledger_retention_days)
    try:
        assert writer.retention is not None and writer.retention.days == 40
    finally:
        writer.close()
        store.close()
    assert not writer.retention._thread.is_alive()
