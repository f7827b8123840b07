"""Does the ledger stay fast with millions of rows behind it? Three measures on a ledger made by
scripts/make_ledger.py (60 days ending at a UTC midnight), on SQLite and on PostgreSQL:

    flock /tmp/cpu.lock .venv/bin/python scripts/ledger_scale.py --rows 10000000 --sqlite /tmp/ledger10m.db \
        --postgres postgresql://postgres@127.0.0.1/test --json ledger_scale.json

(a) ``leaninfer usage --by team --period day`` over the last 30 days: in process (``usage_payload``), and the
    whole CLI as a subprocess (interpreter start included); the raw-rows path once, for comparison. Floor: 1 s.
(b) the admission path's store work per request, at steady state, with that ledger behind it vs an empty store:
    key read, budget reserve in a key's, a team's and the organisation's budgets, settle (the shared-state path:
    the State is the store) and the ledger row's append; p50/p99 over ``--ops`` requests. Also budget windows'
    cold reads (a key's day, scopes' months: their spend buckets). Floor: p99 added <= 1 ms.
(c) retention deleting the first month (batches of 500 rows, 50 ms apart) while a paced load of (b) runs:
    the load's p99 during the deletion vs idle, for up to ``--prune-s`` seconds. Floor: within 2x.

``--sqlite PATH`` is made when missing (``--rows``); ``--postgres ADMIN_URL`` makes a dedicated database
``leaninfer_ledger_scale`` on that server and drops it at the end. Retention (c) deletes rows: run it last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from make_ledger import make  # noqa: E402

from leaninfer.finops import usage_sql  # noqa: E402
from leaninfer.finops.keys import KeyPolicy, KeyRecord  # noqa: E402
from leaninfer.finops.ledger import LedgerRow  # noqa: E402
from leaninfer.finops.retention import BATCH_ROWS, prune  # noqa: E402
from leaninfer.finops.store import open_store  # noqa: E402
from leaninfer.finops.store.ports import Hold  # noqa: E402
from leaninfer.finops.usage import usage_payload  # noqa: E402

DAY = 86_400


def cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    return platform.processor()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def ms(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": round(pct(xs, 50) * 1e3, 3), "p99_ms": round(pct(xs, 99) * 1e3, 3),
            "max_ms": round(max(xs) * 1e3, 3)}


def end_of(store) -> float:
    return store.ledger_read(lambda sql, db: sql.time_span(db, None, None))[1] // DAY * DAY + DAY


# -- (a) --------------------------------------------------------------------------------------------------------
def report_times(store, url: str, end: float) -> dict:
    since, until = end - 30 * DAY, end
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        p = usage_payload(store, ["team"], "day", since, until, "UTC")
        runs.append(time.perf_counter() - t)
    iso = [datetime.fromtimestamp(x, UTC).strftime("%Y-%m-%d") for x in (since, until)]
    cmd = [sys.executable, "-m", "leaninfer", "usage", "--store", url, "--by", "team", "--period", "day",
           "--since", iso[0], "--until", iso[1], "--json"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    cli_s = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "leaninfer", "usage", "--help"], check=True, capture_output=True)
    import_s = time.perf_counter() - t
    old = usage_sql.RAW_ROWS_MAX
    usage_sql.RAW_ROWS_MAX = 10**12
    try:
        t = time.perf_counter()
        raw = usage_payload(store, ["team"], "day", since, until, "UTC")
        raw_s = time.perf_counter() - t
    finally:
        usage_sql.RAW_ROWS_MAX = old
    same = [{k: v for k, v in g.items() if k != "p95_latency_s"} for g in p["groups"]] == \
           [{k: v for k, v in g.items() if k != "p95_latency_s"} for g in raw["groups"]]
    return {"source": p["source"], "groups": len(p["groups"]), "requests": p["totals"]["requests"],
            "in_process_s": [round(x, 3) for x in runs], "cli_s": round(cli_s, 3),
            "cli_start_s": round(import_s, 3), "cli_groups": len(json.loads(out.stdout)),
            "raw_rows_path_s": round(raw_s, 3), "raw_path_sums_equal": same}


def plans(store, end: float) -> dict:
    """The plans of the budget window's cold read and the rollup report, as the engine chose them here."""
    pg = store.dialect.name == "PostgreSQL"
    explain = "EXPLAIN " if pg else "EXPLAIN QUERY PLAN "
    queries = {
        "bucket_spend": (store._q["bucket_spend"], ("org", end - 30 * DAY)),
        "raw_spend_org": (store._q["raw_spend_org"], (end - DAY - 600, end - DAY)),
        "rollup_team_day": (store.dialect.prepare("SELECT team, day, SUM(requests) FROM ledger_daily WHERE day >= ? "
                                                  "AND day < ? GROUP BY team, day"), (end - 30 * DAY, end)),
    }

    def read(_, db):
        return {name: [str(r[-1]) for r in db.execute(explain + sql, args).fetchall()]
                for name, (sql, args) in queries.items()}
    return store.ledger_read(read)


# -- (b) --------------------------------------------------------------------------------------------------------
class Admission:
    """What the gate asks of the store per request with shared state, minus HTTP and the model."""

    def __init__(self, store, key_id: str, now: float):
        self.store, self.key_id, self.now, self.i = store, key_id, now, 0
        self.day = now // DAY * DAY
        self.tag = f"bench-{os.getpid()}-{id(self)}"

    def once(self) -> float:
        """One request's store work: its key, a reservation in its key's day budget and in its team's and the
        organisation's month budgets (one transaction), the settle, and its ledger row."""
        self.i += 1
        t = time.perf_counter()
        self.store.get_key(self.key_id)
        hold = Hold(f"{self.tag}-{self.i}", "", self.now + 600)
        month = self.day - 29 * DAY
        accounts = [(self.key_id, "usd_day", self.day), ("team:team-01@1", "usd_month", month),
                    ("org@1", "usd_month", month)]
        self.store.reserve_scoped([(a, b, w, 10**15, 2_000_000) for a, b, w in accounts], hold, self.key_id)
        self.store.settle_scoped([(a, b, w, 2_000_000, 1_234_567) for a, b, w in accounts], hold.hold_id)
        self.store.append([LedgerRow(f"{self.tag}-{self.i}", self.now, self.now + 0.05, "embeddings", "minilm",
                                     "minilm", key_id=self.key_id, team="bench", workflow="rag",
                                     input_tokens=12, cost_nusd=1_234_567, duration_s=0.05)])
        return time.perf_counter() - t


def admission(store, key_id: str, now: float, ops: int) -> dict:
    a = Admission(store, key_id, now)
    for _ in range(min(200, ops)):
        a.once()
    return ms([a.once() for _ in range(ops)])


def cold_reads(store, end: float) -> dict:
    """A budget window's first read (a new day, a server's start, a budget just set): keys' day windows, and the
    month windows of scopes (teams, tags, models, end users, the organisation) starting at a UTC midnight, at a
    New York one (5 h later) and, for the raw-row path, 7 minutes into a quarter hour."""
    out: dict[str, list[float]] = {"key_day": [], "scope_month_utc": [], "scope_month_new_york": [],
                                   "scope_month_unaligned": []}
    scopes = ["org", "tag:env=prod", "tag:region=eu", "model:gpt2", "model:minilm", "user:user-00001",
              *(f"team:team-{i:02d}" for i in range(10))]
    for i in range(50):
        t = time.perf_counter()
        store.reserve(f"key-{i:04d}", [("usd_day", end - DAY, 10**15, 1)], None)
        out["key_day"].append(time.perf_counter() - t)
    for name, start in (("scope_month_utc", end - 30 * DAY), ("scope_month_new_york", end - 30 * DAY + 5 * 3600),
                        ("scope_month_unaligned", end - 30 * DAY + 5 * 3600 + 420)):
        for g, scope in enumerate(scopes):
            t = time.perf_counter()
            store.reserve_scoped([(f"{scope}@{g}{name}", "usd_month", start, 10**15, 1)], None)
            out[name].append(time.perf_counter() - t)
    return {name: ms(xs) for name, xs in out.items()}


# -- (c) --------------------------------------------------------------------------------------------------------
def paced(a: Admission, seconds: float, rate: float, done=lambda: False) -> list[float]:
    out, t_next, stop = [], time.perf_counter(), time.perf_counter() + seconds
    while time.perf_counter() < stop and not done():
        out.append(a.once())
        t_next += 1 / rate
        time.sleep(max(0.0, t_next - time.perf_counter()))
    return out


def retention_under_load(store, key_id: str, end: float, prune_s: float, rate: float, batch: int) -> dict:
    a = Admission(store, key_id, end - 60)
    paced(a, 3, rate)
    idle = paced(a, 20, rate)
    before = end - 30 * DAY  # the first month of the 60 days
    stop, deleted, took = threading.Event(), [0], [0.0]

    def run():
        t = time.perf_counter()
        deleted[0] = prune(store, before, batch=batch, stop=stop)
        took[0] = time.perf_counter() - t

    th = threading.Thread(target=run)
    th.start()
    loaded = paced(a, prune_s, rate, done=lambda: not th.is_alive())  # while the deletion runs
    stop.set()
    th.join()
    return {"idle": ms(idle), "during_prune": ms(loaded), "rows_deleted": deleted[0], "prune_s": round(took[0], 1),
            "prune_rows_per_s": round(deleted[0] / took[0]), "load_rate_per_s": rate, "batch_rows": batch,
            "p99_ratio": round(pct(loaded, 99) / pct(idle, 99), 2)}


def bench(url: str, empty_url: str, ops: int, prune_s: float, rate: float, batch: int, parts: str) -> dict:
    store, empty = open_store(url), open_store(empty_url)
    try:
        end = end_of(store)
        now = end - 60
        rows = store.ledger_read(lambda sql, db: db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0])
        print(f"{url}: {rows:,} rows", flush=True)
        res: dict = {"store": url.split("@")[-1], "rows": rows, "plans": plans(store, end)}
        if "a" in parts:
            res["a_usage_team_day_30d"] = report_times(store, url, end)
            print(json.dumps(res["a_usage_team_day_30d"]), flush=True)
        if "c" in parts and "b" not in parts:
            res["c_retention"] = retention_under_load(store, "key-0001", end, prune_s, rate, batch)
            print(json.dumps(res["c_retention"]), flush=True)
            return res
        empty.add_key(KeyRecord("key-0000", "h", KeyPolicy(team="bench"), 0.0))
        # the heaviest key of the big ledger (most rows), and the same id on the empty store
        res["b_admission"] = {"big": admission(store, "key-0000", now, ops),
                              "empty": admission(empty, "key-0000", now, ops)}
        res["b_admission"]["added_p99_ms"] = round(res["b_admission"]["big"]["p99_ms"]
                                                   - res["b_admission"]["empty"]["p99_ms"], 3)
        res["b_cold_window_read"] = cold_reads(store, end)
        print(json.dumps(res["b_admission"]), json.dumps(res["b_cold_window_read"]), flush=True)
        if "c" not in parts:
            return res
        res["c_retention"] = retention_under_load(store, "key-0001", end, prune_s, rate, batch)
        print(json.dumps(res["c_retention"]), flush=True)
        return res
    finally:
        store.close()
        empty.close()


@contextlib.contextmanager
def pg_database(admin_url: str, name: str = "leaninfer_ledger_scale"):
    import psycopg

    conn = psycopg.connect(admin_url, autocommit=True)
    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.execute(f"CREATE DATABASE {name}")
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}", f"{base}/{name}_empty"
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"DROP DATABASE IF EXISTS {name}_empty WITH (FORCE)")
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--sqlite", help="a SQLite ledger (made with --rows when missing)")
    ap.add_argument("--postgres", help="an admin URL of a PostgreSQL server (a database is made and dropped)")
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--prune-s", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=100.0, help="requests/s of the load during retention")
    ap.add_argument("--prune-batch", type=int, default=BATCH_ROWS, help="rows a retention transaction")
    ap.add_argument("--parts", default="abc", help="which measures: a, b, c")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    end = time.time() // DAY * DAY
    results = {"cpu": cpu(), "python": platform.python_version(), "results": []}
    if a.sqlite:
        if not Path(a.sqlite).exists():
            make(a.sqlite, a.rows, 60, end)
        with tempfile.TemporaryDirectory() as d:
            results["results"].append(bench(a.sqlite, str(Path(d) / "empty.db"), a.ops, a.prune_s, a.rate,
                                           a.prune_batch, a.parts))
    if a.postgres:
        with pg_database(a.postgres) as (url, empty_url):
            t = time.perf_counter()
            make(url, a.rows, 60, end)
            made = time.perf_counter() - t
            import psycopg
            with psycopg.connect(a.postgres, autocommit=True) as c:
                c.execute(f"CREATE DATABASE {empty_url.rsplit('/', 1)[1]}")
            r = bench(url, empty_url, a.ops, a.prune_s, a.rate, a.prune_batch, a.parts)
            r["make_s"] = round(made, 1)
            results["results"].append(r)
    text = json.dumps(results, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
