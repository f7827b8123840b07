"""``leaninfer serve --ray``: the same app on Ray Serve, with a small local Ray cluster (one Serve app for the
module: 2 replicas, each loading minilm and tiny-gpt2, keys required, a SQLite ledger shared by the replicas).

Tests run in file order: the replica-killing test is last, since it replaces a replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from leaninfer.cli import app as cli_app
from leaninfer.engines.engine import BatchingConfig
from leaninfer.finops.config import FinOpsConfig
from leaninfer.finops.money import to_nano
from leaninfer.finops.store import open_store
from leaninfer.serving.ray_serve import (
    APP_NAME,
    PROXY_CALLBACK,
    PROXY_CALLBACK_ENV,
    REPLICA_HEADER,
    RayOptions,
    deploy,
)
from leaninfer.serving.state import ServerConfig

from ..finops.conftest import bearer, make_key
from ..finops.store_fixtures import postgres_database

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # a Ray cluster and servers as processes
BATCH = 2  # small, so that a burst overflows max_ongoing (= the batch) + max_queued
MAX_QUEUED = 2


def _free_port(n: int = 1) -> int:
    """A port p with p .. p+n-1 free (each replica's metrics listener takes base + its rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n < 65535 and all(_is_free(p + i) for i in range(n)):
            return p
    raise RuntimeError("no free port range")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'leaninfer[ray]')")
    from ray import serve

    store = str(tmp_path_factory.mktemp("ray") / "ledger.db")
    old_env = os.environ.get(PROXY_CALLBACK_ENV)
    os.environ[PROXY_CALLBACK_ENV] = PROXY_CALLBACK  # Ray's proxy (a child of this process) reads it at start
    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    port, metrics_port = _free_port(), _free_port(2)
    cfg = ServerConfig(BatchingConfig(max_batch_size=BATCH, max_wait_ms=2), usd_per_hour=3.6,
                       finops=FinOpsConfig(auth="keys", store=store))
    try:
        deploy({"minilm": "minilm", "tiny-gpt2": "random:tiny-gpt2"}, "cpu", cfg,
               RayOptions(replicas=2, max_ongoing_requests=BATCH, max_queued_requests=MAX_QUEUED,
                          replica_metrics_port=metrics_port), port=port)
        key = make_key(store, team="ray")
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "store": store, "key": key,
               "metrics_port": metrics_port}
    finally:
        serve.shutdown()
        ray.shutdown()
        if old_env is None:
            os.environ.pop(PROXY_CALLBACK_ENV, None)
        else:
            os.environ[PROXY_CALLBACK_ENV] = old_env


def _ledger(store: str):
    s = open_store(store)
    try:
        return s.rows()
    finally:
        s.close()


def _post_until_served(client: httpx.Client, path: str, body: dict, headers: dict, tries: int = 100):
    """POST, retrying Ray's 503 (Retry-After) as a client does; the first other answer."""
    for _ in range(tries):
        r = client.post(path, json=body, headers=headers)
        if r.status_code != 503:
            return r
        time.sleep(0.05)
    return r


# -- without a cluster ------------------------------------------------------------------------------------------
def test_ray_flag_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = CliRunner().invoke(cli_app, ["serve", "minilm", "--ray"])
    assert r.exit_code == 2
    assert "pip install 'leaninfer[ray]'" in r.output


@pytest.mark.parametrize("flags, says", [
    (["--max-batch-size", "8", "--max-ongoing-requests", "4"], "--max-ongoing-requests 4 is below --max-batch-size 8"),
    (["--replicas", "2", "--max-replicas", "3"], "--replicas 2 is a fixed count"),
    (["--min-replicas", "3", "--max-replicas", "2"], "--max-replicas 2 is below --min-replicas 3"),
])
def test_bad_ray_flags_are_refused_before_anything_starts(flags, says):
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'leaninfer[ray]')")
    r = CliRunner().invoke(cli_app, ["serve", "minilm", "--ray", *flags])
    assert r.exit_code == 2, r.output
    assert says in " ".join(r.output.split())


def test_serve_ray_cli_serves_and_stops_cleanly_on_sigterm(tmp_path):
    """The real command: a local cluster, 1 replica, a request, then SIGTERM -> Serve shut down, exit 0."""
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'leaninfer[ray]')")
    port = _free_port()
    exe = Path(sys.executable).with_name("leaninfer")
    proc = subprocess.Popen([str(exe), "serve", "minilm", "--ray", "--port", str(port), "--replica-cpus", "1",
                             "--replica-metrics-port", "0", "--store", str(tmp_path / "l.db"),
                             "--max-batch-size", "4"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, r = time.time() + 180, None
        while time.time() < deadline and proc.poll() is None:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": "minilm", "input": "hi"},
                               timeout=10)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert r is not None and r.status_code == 200, proc.stderr.read() if proc.poll() is not None else r
        assert len(r.json()["data"][0]["embedding"]) == 384
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        with pytest.raises(httpx.HTTPError):  # the proxy is gone with the cluster
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
        rows = _ledger(str(tmp_path / "l.db"))  # the store path was made absolute for the replica
        assert r.json()["usage"]["leaninfer"]["request_id"] in {row.request_id for row in rows}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- on the module's cluster ------------------------------------------------------------------------------------
def test_openai_client_embeddings_completions_and_chat_stream(cluster):
    from openai import OpenAI

    client = OpenAI(base_url=cluster["url"] + "/v1", api_key=cluster["key"], max_retries=10)
    emb = client.embeddings.create(model="minilm", input=["a cat sits", "a dog runs"])
    assert [len(d.embedding) for d in emb.data] == [384, 384]
    assert emb.usage.prompt_tokens > 0
    comp = client.completions.create(model="tiny-gpt2", prompt="hello there", max_tokens=5, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert comp.usage.completion_tokens == 5 and comp.choices[0].text
    stream = client.chat.completions.create(model="tiny-gpt2", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens == 6
    # greedy: the same answer from whichever replica serves it (same random:tiny-gpt2 seed in both)
    again = client.completions.create(model="tiny-gpt2", prompt="hello there", max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert again.choices[0].text == comp.choices[0].text


def test_requests_spread_over_both_replicas_and_metrics_carry_the_replica(cluster):
    headers = bearer(cluster["key"])
    seen: dict[str, int] = {}
    with httpx.Client(base_url=cluster["url"], timeout=60) as c:
        for i in range(40):
            r = _post_until_served(c, "/v1/embeddings", {"model": "minilm", "input": f"sentence {i}"}, headers)
            assert r.status_code == 200
            seen[r.headers[REPLICA_HEADER]] = seen.get(r.headers[REPLICA_HEADER], 0) + 1
    assert len(seen) == 2, seen
    # each replica's own /metrics listener (base port + its rank on the node) carries its replica label and
    # counts exactly the requests that replica answered
    counted = {}
    for port in (cluster["metrics_port"], cluster["metrics_port"] + 1):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = [ln for ln in text.splitlines() if ln.startswith("leaninfer_requests_total{")
                 and 'model="minilm"' in ln and 'status="200"' in ln]
        assert len(lines) == 1, lines
        replica = lines[0].split('replica="')[1].split('"')[0]
        counted[replica] = int(float(lines[0].rsplit(" ", 1)[1]))
    assert set(counted) == set(seen)
    assert all(counted[rep] >= seen[rep] for rep in seen)  # the openai test's requests are counted too


def test_backpressure_is_a_503_with_retry_after_and_an_openai_body(cluster):
    """A burst of 30 generations against 2 replicas x max_ongoing 2 + 2 queued: Ray refuses the overflow with a
    503, Retry-After and the same OpenAI-shaped body as a full queue on one machine; the others are served."""
    body = {"model": "tiny-gpt2", "prompt": "overload", "max_tokens": 120, "temperature": 0, "ignore_eos": True}

    async def burst():
        async with httpx.AsyncClient(base_url=cluster["url"], timeout=120, headers=bearer(cluster["key"]),
                                     limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(30)))

    rs = asyncio.run(burst())
    refused = [r for r in rs if r.status_code == 503]
    served = [r for r in rs if r.status_code == 200]
    assert refused and served and len(refused) + len(served) == 30, [r.status_code for r in rs]
    for r in refused:
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("server_overloaded", "queue_full")
        assert "max_queued_requests=2" in err["message"]
    assert all(r.json()["usage"]["completion_tokens"] == 120 for r in served)


def _budget_race(url: str, store: str, probe_key: str) -> None:
    """A key whose $ budget allows about 50 requests, 200 concurrent requests spread over 2 replicas (a client
    retrying Ray's 503): what settles is within the budget, the rest get 429 budget_exceeded."""
    embed = {"model": "minilm", "input": "a sentence about budgets"}
    with httpx.Client(base_url=url, timeout=60) as c:
        costs = [_post_until_served(c, "/v1/embeddings", embed, bearer(probe_key)).json()["usage"]
                 ["leaninfer"]["cost_usd"] for _ in range(8)]
    budget = 50 * sorted(costs)[len(costs) // 2]
    key = make_key(store, team="budget", budget_usd_day=budget)

    async def one(c):
        for _ in range(400):
            r = await c.post("/v1/embeddings", json=embed)
            if r.status_code != 503:
                return r
            await asyncio.sleep(random.uniform(0.02, 0.1))
        return r

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=120, headers=bearer(key),
                                     limits=httpx.Limits(max_connections=200)) as c:
            return await asyncio.gather(*(one(c) for _ in range(200)))

    rs = asyncio.run(go())
    ok = [r for r in rs if r.status_code == 200]
    refused = [r for r in rs if r.status_code == 429]
    assert len(ok) + len(refused) == 200 and ok and refused, [r.status_code for r in rs]
    assert all(r.json()["error"]["type"] == "budget_exceeded" for r in refused)
    assert len({r.headers[REPLICA_HEADER] for r in ok}) == 2
    key_id = key.split(".")[0][3:]
    rows = [row for row in _ledger(store) if row.key_id == key_id]
    settled = sum(row.cost_nusd for row in rows)
    assert settled <= to_nano(budget)
    assert settled == sum(to_nano(r.json()["usage"]["leaninfer"]["cost_usd"]) for r in ok)


def test_budget_holds_across_replicas_under_200_concurrent_requests(cluster):
    _budget_race(cluster["url"], cluster["store"], cluster["key"])


def test_killed_replica_is_restarted_and_no_completed_response_leaves_the_ledger(cluster):
    """4 clients in a loop; one replica's actor is killed: its in-flight requests may fail, Ray starts a new
    replica that serves again, and every response a client received whole has its ledger row."""
    import ray

    headers = bearer(cluster["key"])
    done: list[tuple[float, str, str]] = []  # (time, replica, request_id) of each 200
    failed: list[int] = []
    stop = threading.Event()

    def client(i: int):
        with httpx.Client(base_url=cluster["url"], timeout=60) as c:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    r = c.post("/v1/embeddings", json={"model": "minilm", "input": f"client {i} request {n}"},
                               headers=headers)
                except httpx.HTTPError:
                    failed.append(-1)
                    continue
                if r.status_code == 200:
                    done.append((time.monotonic(), r.headers[REPLICA_HEADER],
                                 r.json()["usage"]["leaninfer"]["request_id"]))
                else:
                    failed.append(r.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len({rep for _, rep, _ in done}) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = {rep for _, rep, _ in done}
        assert len(before) == 2, before
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(f"SERVE_REPLICA::leaninfer#leaninfer#{victim}", namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        deadline = killed_at + 120
        while time.monotonic() < deadline and not any(rep not in before for _, rep, _ in done):
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
    new = {rep for t, rep, _ in done if rep not in before}
    assert new, "Ray did not start a replacement replica within 120 s"
    assert any(t > killed_at and rep != victim for t, rep, _ in done)  # the survivor kept serving
    assert all(s in (-1, 500, 502, 503) for s in failed), failed  # only the killed replica's in-flight work
    ledger_ids = {row.request_id for row in _ledger(cluster["store"])}
    missing = [rid for _, _, rid in done if rid not in ledger_ids]
    assert not missing, f"{len(missing)} of {len(done)} completed responses have no ledger row"


def test_budget_holds_across_replicas_with_the_postgresql_store(cluster):
    """The same race with the replicas sharing budgets through PostgreSQL (last in the module: it redeploys
    the app on that store)."""
    with postgres_database() as store:
        cfg = ServerConfig(BatchingConfig(max_batch_size=BATCH, max_wait_ms=2), usd_per_hour=3.6,
                           finops=FinOpsConfig(auth="keys", store=store))
        deploy({"minilm": "minilm"}, "cpu", cfg, RayOptions(replicas=2, max_ongoing_requests=BATCH,
                                                            max_queued_requests=MAX_QUEUED,
                                                            replica_metrics_port=_free_port(2)),
               port=cluster["port"])
        try:
            _budget_race(cluster["url"], store, make_key(store, team="ray"))
        finally:
            from ray import serve
            serve.delete(APP_NAME)
