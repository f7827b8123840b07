"""Fill a store with a realistic ledger, fast: for the scale benchmark (scripts/ledger_scale.py) and for trying
reports on a big ledger.

    flock /tmp/cpu.lock .venv/bin/python scripts/make_ledger.py --rows 10000000 --days 60 --store big.db
    flock /tmp/cpu.lock .venv/bin/python scripts/make_ledger.py --rows 10000000 --store postgresql://postgres@127.0.0.1/big

Teams, their keys, models with their prices, endpoints, workflows, a diurnal arrival curve over ``--days`` days
ending now (or at ``--end``), lognormal durations, 2% budget refusals, 0.5% errors, cache hits, tags. Columns are
drawn with numpy a chunk at a time; SQLite gets ``executemany`` with the secondary indexes dropped during the
load and built after, PostgreSQL gets ``COPY``. The rollups and spend buckets are rebuilt at the end as the
migrations backfill them, so they equal the rows. The store is created (and migrated) by leaninfer first.
No prompt text, as in a real ledger.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time

import numpy as np

from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.ledger import LEDGER_FIELDS
from leaninfer.finops.store import open_store
from leaninfer.finops.store.bucket_sql import BUCKETS_FROM_LEDGER, backfill_tags
from leaninfer.finops.store.ledger_schema import ROLLUP_FROM_ROWS, TEAM_FROM_DAILY

CHUNK = 200_000
MODELS = {  # name: ($ per 1k output tokens, endpoint, median seconds)
    "minilm": (0.00002, "embeddings", 0.02), "minilm-int8": (0.00001, "embeddings", 0.012),
    "gpt2": (0.0004, "completions", 0.8), "gpt2-int8": (0.00025, "completions", 0.5),
    "qwen-0.5b": (0.0012, "chat.completions", 1.6), "qwen-0.5b-int8": (0.0008, "chat.completions", 1.1),
}
WORKFLOWS = ["rag", "tagging", "search", "summarize", "chat", "classify", "dedupe", "eval"]


def plan(teams: int, keys: int, seed: int):
    rng = np.random.default_rng(seed)
    team_names = [f"team-{i:02d}" for i in range(teams)]
    key_team = [team_names[i % teams] for i in range(keys)]
    key_weight = rng.pareto(1.2, keys) + 0.05  # a few keys carry most of the traffic
    return team_names, key_team, key_weight / key_weight.sum()


def chunk_rows(rng, start: int, n: int, t0: float, t1: float, key_team, key_weight):
    """``n`` rows as tuples in LEDGER_FIELDS order, arrival times in [t0, t1), request ids from ``start``."""
    span = t1 - t0
    # diurnal: more traffic in the (UTC) afternoon; drawn by rejection-free inverse of a cosine bump
    u = np.sort(rng.random(n))
    created = t0 + u * span
    created += 3600 * 3 * np.sin(2 * np.pi * (created % 86400) / 86400)
    created = np.clip(created, t0, t1 - 1e-3)
    names = list(MODELS)
    model = rng.integers(0, len(names), n)
    key = rng.choice(len(key_team), n, p=key_weight)
    workflow = rng.integers(0, len(WORKFLOWS), n)
    status = np.where(rng.random(n) < 0.02, 429, np.where(rng.random(n) < 0.005, 500, 200))
    inp = rng.integers(5, 2000, n)
    out = np.where([MODELS[names[m]][1] == "embeddings" for m in model], 0, rng.integers(1, 500, n))
    med = np.array([MODELS[names[m]][2] for m in model])
    dur = np.where(status == 429, 0.0002, med * rng.lognormal(0, 0.6, n))
    price = np.array([MODELS[names[m]][0] for m in model])
    cost = np.where(status == 429, 0, ((inp + out) * price * 1e6).astype(np.int64))  # nano-dollars per 1k tokens
    hit = (rng.random(n) < 0.05) & (status == 200)
    cost = np.where(hit, 0, cost)
    tags = [json.dumps({"env": "prod"}), json.dumps({"env": "dev"}), json.dumps({}), json.dumps({"env": "prod",
                                                                                                 "region": "eu"})]
    tag = rng.integers(0, len(tags), n)
    # a third of the requests name an end user (OpenAI's ``user``), one of 20,000
    users = np.where(rng.random(n) < 1 / 3, rng.integers(0, 20_000, n), -1).tolist()
    endpoints = [MODELS[m][1] for m in names]
    rows = []
    created_l, dur_l, cost_l, inp_l, out_l = created.tolist(), dur.tolist(), cost.tolist(), inp.tolist(), out.tolist()
    for i in range(n):
        m, k, st = names[model[i]], int(key[i]), int(status[i])
        c, d, h = created_l[i], dur_l[i], bool(hit[i])
        ci, co = (cost_l[i] * inp_l[i]) // max(inp_l[i] + out_l[i], 1), 0
        co = cost_l[i] - ci
        rec = {
            "request_id": f"req-{start + i:012d}", "created_at": c, "finished_at": c + d,
            "endpoint": endpoints[model[i]], "requested_model": m, "served_model": "" if st == 429 else m,
            "variant_hash": "" if st == 429 else f"sha256:{model[i]:064x}", "key_id": f"key-{k:04d}",
            "team": key_team[k], "workflow": WORKFLOWS[workflow[i]], "tags": tags[tag[i]],
            "input_tokens": inp_l[i] if st != 429 else 0, "output_tokens": out_l[i] if st == 200 else 0,
            "cached_tokens": inp_l[i] + out_l[i] if h else 0,
            "charged_tokens": 0 if h or st != 200 else inp_l[i] + out_l[i],
            "queue_s": d * 0.05, "ttft_s": None if out_l[i] == 0 else d * 0.2, "duration_s": d, "busy_s": d * 0.8,
            "cost_input_nusd": ci, "cost_output_nusd": co, "cost_nusd": cost_l[i],
            "price_basis": "engine-busy-seconds at $1.00/h", "reserved_nusd": cost_l[i] * 2,
            "reserved_tokens": 2048, "status": st,
            "error_class": {200: "", 429: "budget_exceeded", 500: "server_error"}[st],
            "cache": "hit" if h else "miss", "cache_saved_nusd": 1000 if h else 0, "route": "",
            "fp32_cost_nusd": None, "routing_saved_nusd": 0, "attempts": "",
            "end_user": f"user-{users[i]:05d}" if users[i] >= 0 else "",
        }
        rows.append(tuple(rec[f] for f in LEDGER_FIELDS))
    return rows


def rebuild(db, prepare, int_type: str) -> None:
    """The rollups, team rollups and spend buckets again from the loaded rows, as the migrations backfill them
    (inside the caller's transaction; ``prepare`` turns ``?`` into the driver's placeholder)."""
    for table, sql in (("ledger_daily", ROLLUP_FROM_ROWS), ("ledger_team_daily", TEAM_FROM_DAILY),
                       ("spend_buckets", BUCKETS_FROM_LEDGER)):
        db.execute(f"DELETE FROM {table}")
        db.execute(sql.format(int=int_type))
    backfill_tags(db, prepare, {"int": int_type})


def load_sqlite(path: str, chunks) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger' "
                         "AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        db.execute(f"DROP INDEX {name}")
    sql = f"INSERT INTO ledger ({', '.join(LEDGER_FIELDS)}) VALUES ({', '.join('?' * len(LEDGER_FIELDS))})"
    for rows in chunks:
        db.execute("BEGIN")
        db.executemany(sql, rows)
        db.execute("COMMIT")
    t = time.perf_counter()
    for _, create in indexes:
        db.execute(create)
    print(f"  indexes built in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    db.execute("BEGIN")
    rebuild(db, str, "INTEGER")
    db.execute("COMMIT")
    db.execute("ANALYZE")
    print(f"  rollups and spend buckets rebuilt in {time.perf_counter() - t:.1f} s", flush=True)
    db.close()


def load_postgres(url: str, chunks) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ledger' "
                               "AND indexname <> 'ledger_pkey'").fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        for rows in chunks:
            with conn.transaction(), conn.cursor() as cur, \
                    cur.copy(f"COPY ledger ({', '.join(LEDGER_FIELDS)}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
        t = time.perf_counter()
        for _, create in indexes:
            conn.execute(create)
        print(f"  indexes built in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        with conn.transaction():
            rebuild(conn, lambda sql: sql.replace("?", "%s"), "BIGINT")
        # VACUUM too: else autovacuum visits the freshly copied 10M rows during whatever is measured next
        conn.execute("VACUUM (ANALYZE) ledger")
        conn.execute("VACUUM (ANALYZE) ledger_daily")
        conn.execute("VACUUM (ANALYZE) spend_buckets")
        print(f"  rollups and spend buckets rebuilt in {time.perf_counter() - t:.1f} s", flush=True)


def make(store_url: str, rows: int, days: float, end: float, teams: int = 20, keys: int = 200,
         seed: int = 0) -> None:
    store = open_store(store_url)  # the schema, migrated
    team_names, key_team, key_weight = plan(teams, keys, seed)
    have = {k.key_id for k in store.list_keys(include_revoked=True)}
    for i, team in enumerate(key_team):
        if f"key-{i:04d}" not in have:
            store.add_key(KeyRecord(f"key-{i:04d}", f"hash-{i}", KeyPolicy(team=team, budget_usd_day=1000.0),
                                    end - days * 86400 - 1))
    store.close()
    rng = np.random.default_rng(seed)
    t0 = end - days * 86400
    per = (end - t0) / rows

    def chunks():
        t = time.perf_counter()
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            yield chunk_rows(rng, start, n, t0 + start * per, t0 + (start + n) * per, key_team, key_weight)
            done = start + n
            print(f"  {done:,} rows, {done / (time.perf_counter() - t):,.0f} rows/s", flush=True)

    t = time.perf_counter()
    if store_url.startswith(("postgresql://", "postgres://")):
        load_postgres(store_url, chunks())
    else:
        load_sqlite(store_url.removeprefix("sqlite:///"), chunks())
    print(f"{rows:,} rows over {days:g} days in {time.perf_counter() - t:.1f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--end", type=float, default=None, help="unix time of the last row (default: now)")
    ap.add_argument("--teams", type=int, default=20)
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--store", required=True, help="SQLite path or postgresql:// URL (a fresh one)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    make(a.store, a.rows, a.days, a.end if a.end is not None else time.time(), a.teams, a.keys, a.seed)


if __name__ == "__main__":
    main()
