"""``leaninfer serve`` as a child process, and ``wrk`` driving it: what the benchmark suites, the measuring
scripts and the tests that need a real server share.

``wrk`` (Debian's package: one C thread, pre-built requests) is the client of throughput measurements on a
small machine: its own CPU is a small fraction of a Python client's, so the cores measure the server.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ...errors import LeaninferError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], port: int | None = None, *, log: Path | None = None, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, timeout_s: float = 300.0) -> tuple[subprocess.Popen, str]:
    """``leaninfer serve ARGS --port PORT`` in a child process; returns ``(process, base URL)`` once ``/health``
    answers 200. Its output goes to ``log`` (or nowhere); ``cwd`` is where its ledger file lands."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "leaninfer.cli", "serve", *args, "--port", str(port)]
    out = subprocess.DEVNULL
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("w")
        out.write(shlex.join(cmd) + "\n")
        out.flush()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})})
    if log is not None:
        out.close()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, f"`leaninfer serve {shlex.join(args)}`", log, timeout_s)
    return proc, url


def wait_healthy(proc: subprocess.Popen, url: str, what: str, log: Path | None = None,
                 timeout_s: float = 300.0) -> None:
    """Until the server ``proc`` started answers ``url``/health with 200 (any OpenAI-compatible server: leaninfer,
    ``transformers serve``); a :class:`LeaninferError` naming ``what`` (and the tail of ``log``) if it exits or
    stays silent for ``timeout_s``, when it is stopped."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " | ".join(log.read_text().strip().splitlines()[-3:]) if log is not None else ""
            raise LeaninferError(f"{what} exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise LeaninferError(f"{what} did not answer /health within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM (a drain), then SIGKILL if it outlives ``timeout_s``; returns the exit code."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


WRK_LUA = r"""
local reqs, i = {}, 0
init = function(args)
  local headers = {["Content-Type"] = "application/json"}
  if args[3] ~= nil and args[3] ~= "" then headers["Authorization"] = "Bearer " .. args[3] end
  for line in io.lines(args[1]) do reqs[#reqs + 1] = wrk.format("POST", args[2], headers, line) end
end
request = function() i = i % #reqs + 1; return reqs[i] end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('LEANINFER {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status, e.status, latency:percentile(50),
    latency:percentile(95), latency:percentile(99)))
end
"""


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(url: str, path: str, bodies: list[dict], connections: int, seconds: float,
            api_key: str | None = None) -> dict:
    """A closed loop of ``connections`` keep-alive connections POSTing ``bodies`` round-robin to ``url+path``
    for ``seconds``: its summary (requests, errors, latency percentiles in µs), ``req_per_s`` of 2xx answers,
    and wrk's own CPU seconds (``client_cpu_s``)."""
    with tempfile.TemporaryDirectory(prefix="leaninfer-wrk-") as tmp:
        lua, data = Path(tmp) / "post.lua", Path(tmp) / "bodies.jsonl"
        lua.write_text(WRK_LUA)
        data.write_text("".join(json.dumps(b) + "\n" for b in bodies))
        c0 = _children_cpu_s()
        try:
            out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout",
                                  "60", "-s", str(lua), url + path, "--", str(data), path, api_key or ""],
                                 capture_output=True, text=True, check=True).stdout
        except FileNotFoundError:
            raise LeaninferError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)") from None
        res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("LEANINFER "))[len("LEANINFER "):])
    res["client_cpu_s"] = _children_cpu_s() - c0
    res["req_per_s"] = (res["requests"] - res["non2xx"]) / (res["duration_us"] / 1e6)
    return res
