"""A real server: `leaninfer serve` in a subprocess on 127.0.0.1, the official openai client, clients hanging up
at every point, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # `leaninfer serve` as a process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    store = str(tmp_path_factory.mktemp("ledger") / "leaninfer.db")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "leaninfer.cli", "serve", "minilm", "random:tiny-gpt2",
                             "--port", str(port), "--usd-per-hour", "1.0", "--store", store], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            pytest.fail(proc.stdout.read().decode())
        time.sleep(0.1)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name + "{"))


def running(url: str) -> float:
    return gauge(url, "leaninfer_running_requests")


def test_openai_client_round_trip(server):
    from openai import OpenAI

    _, url = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    e = client.embeddings.create(model="minilm", input=["a cat", "a dog"])  # base64 by default
    assert len(e.data) == 2 and len(e.data[0].embedding) == 384 and e.usage.prompt_tokens > 0
    c = client.completions.create(model="tiny-gpt2", prompt="hello", max_tokens=5, temperature=0)
    assert c.usage.completion_tokens == 5 and c.choices[0].finish_reason == "length"
    ch = client.chat.completions.create(model="tiny-gpt2", messages=[{"role": "user", "content": "hi"}],
                                        max_tokens=5, temperature=0)
    assert ch.choices[0].message.role == "assistant"
    parts = [x.choices[0].delta.content or "" for x in client.chat.completions.create(
        model="tiny-gpt2", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0,
        stream=True) if x.choices]
    assert "".join(parts) == ch.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["minilm", "tiny-gpt2"]
    import openai

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def _raw_post(path: str, body: dict) -> tuple[bytes, bytes]:
    """An HTTP/1.1 POST as bytes: (head, body), to send in pieces and hang up at any point."""
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    return head, data


def _hang_up(url: str, how: str, k: int) -> None:
    port = int(url.rsplit(":", 1)[1])
    long = {"model": "tiny-gpt2", "prompt": f"go {k}", "max_tokens": 500, "ignore_eos": True}
    if how in ("before-first-byte", "non-stream-at-once", "mid-body"):
        head, data = _raw_post("/v1/completions", {**long, "stream": how == "before-first-byte"})
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + (data[: len(data) // 2] if how == "mid-body" else data))
        return  # closed without reading a byte
    if how == "mid-stream":
        with httpx.Client(timeout=30) as c, c.stream("POST", f"{url}/v1/completions",
                                                    json={**long, "stream": True}) as r:
            next(r.iter_lines())
        return
    with httpx.Client(timeout=0.3) as c:  # non-stream, hung up while it generates (the read times out)
        with pytest.raises(httpx.TimeoutException):
            c.post(f"{url}/v1/completions", json=long)


def test_every_disconnect_cancels_once(server):
    _, url = server
    kinds = ["before-first-byte", "mid-stream", "non-stream-at-once", "non-stream-later", "mid-body"]
    clients = [kind for kind in kinds for _ in range(20)]  # 100, as the drill
    cancelled0 = gauge(url, "leaninfer_cancelled_requests_total")
    steps0 = gauge(url, "leaninfer_batch_size_count")
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(_hang_up, [url] * len(clients), clients, range(len(clients))))
    # Every client is counted once, and every sequence leaves the engine: nothing is left running or queued.
    for _ in range(600):
        done = (gauge(url, "leaninfer_cancelled_requests_total") - cancelled0 == len(clients)
                and running(url) == 0 and gauge(url, "leaninfer_queue_depth") == 0)
        if done:
            break
        time.sleep(0.1)
    assert gauge(url, "leaninfer_cancelled_requests_total") - cancelled0 == len(clients)
    assert running(url) == 0 and gauge(url, "leaninfer_queue_depth") == 0
    # ... stopped, not decoded to the end: one sequence run to max_tokens alone takes 499 decode steps
    assert gauge(url, "leaninfer_batch_size_count") - steps0 < 499


def test_sigterm_drains_with_health_503_then_exits_0(server):
    proc, url = server
    port = int(url.rsplit(":", 1)[1])
    body = {"model": "tiny-gpt2", "prompt": "go", "max_tokens": 60, "ignore_eos": True, "stream": True}
    head, data = _raw_post("/v1/completions", {**body, "stream": False})
    with socket.create_connection(("127.0.0.1", port)) as held, httpx.Client(timeout=60) as c:
        # a request whose body is not all sent yet: it holds the drain open for as long as this test wants
        held.sendall(head + data[:5])
        with c.stream("POST", f"{url}/v1/completions", json=body) as r:
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)
            for _ in range(100):  # the signal is handled between two ticks of the server
                if httpx.get(f"{url}/health").status_code == 503:
                    break
                time.sleep(0.05)
            h = httpx.get(f"{url}/health")
            assert h.status_code == 503 and h.json()["status"] == "draining"
            refused = httpx.post(f"{url}/v1/completions", json=body)  # new work is refused while draining
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
            rest = list(lines)  # work in flight completes
        assert first.startswith("data: ") and "data: [DONE]" in rest
        assert httpx.get(f"{url}/health").status_code == 503  # the listener lives while a request is open
        held.sendall(data[5:])
        answer = held.recv(65536)
    assert answer.startswith(b"HTTP/1.1 503")  # it had not reached an engine when the drain began
    assert proc.wait(timeout=60) == 0  # a clean drain exits 0
