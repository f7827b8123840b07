"""A real server: `leaninfer serve` in a subprocess on 127.0.0.1, the official openai client, disconnect, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "leaninfer.cli", "serve", "minilm", "random:tiny-gpt2",
                             "--port", str(port), "--usd-per-hour", "1.0"], env=env,
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


def test_disconnect_cancels_then_sigterm_drains(server):
    proc, url = server
    body = {"model": "tiny-gpt2", "prompt": "go", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", f"{url}/v1/completions", json=body) as r:
            next(r.iter_lines())
        # the client went away mid-stream: the sequence leaves the batch long before 400 tokens
        for _ in range(100):
            if gauge(url, "leaninfer_cancelled_requests_total") == 1 and running(url) == 0:
                break
            time.sleep(0.05)
        assert gauge(url, "leaninfer_cancelled_requests_total") == 1 and running(url) == 0
    # SIGTERM while a request is in flight: it completes, then the process exits cleanly
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", f"{url}/v1/completions", json={**body, "max_tokens": 60}) as r:
            lines = r.iter_lines()
            first = next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)
    assert first.startswith("data: ") and "data: [DONE]" in rest
    # uvicorn re-raises the signal after its graceful shutdown: exit by SIGTERM, after the drain
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
