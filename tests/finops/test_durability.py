"""kill -9 under load: every response a client received is in the ledger, and the ledger opens cleanly."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from leaninfer.benchmarks.load.launch import start_server
from leaninfer.finops.money import to_nano
from leaninfer.finops.store import open_store

from .conftest import bearer, make_key

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # kill -9 of a server process under load


def test_kill_9_under_load_loses_no_answered_request(tmp_path):
    store = str(tmp_path / "ledger.db")
    key = make_key(store, team="search", budget_usd_day=1000.0)
    proc, url = start_server(["minilm", "random:tiny-gpt2", "--usd-per-hour", "3600", "--auth", "keys",
                              "--store", store], log=tmp_path / "serve.log",
                             env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    try:
        received: dict[str, float] = {}
        stop = threading.Event()

        def client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=30, headers=bearer(key)) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        if i % 2:
                            r = c.post("/v1/embeddings", json={"model": "minilm", "input": f"text {i} {n}"})
                        else:
                            r = c.post("/v1/completions", json={"model": "tiny-gpt2", "prompt": f"p {i} {n}",
                                                                "max_tokens": 8, "ignore_eos": True})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        u = r.json()["usage"]["leaninfer"]
                        received[u["request_id"]] = u["cost_usd"]

        with ThreadPoolExecutor(8) as pool:
            for i in range(8):
                pool.submit(client, i)
            deadline = time.monotonic() + 60
            while len(received) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            stop.set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(received) >= 40
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    s = open_store(store)
    rows = {row.request_id: row for row in s.rows()}
    s.close()
    missing = set(received) - set(rows)
    assert not missing, f"{len(missing)} answered requests are not in the ledger"
    for request_id, cost in received.items():
        assert rows[request_id].cost_nusd == to_nano(cost)
