"""Cost under load, measured: ``leaninfer bench --suite serve-cpu``.

Design: for every group (a model and its variants) the offline bench runs first (``run_bench``: it builds the
variants with the optimize job into ``OUT/offline/<model>/variants`` and measures each in a fresh process at a
few batch sizes up to the one the server may reach, ``offline_batch_sizes(max_batch_size)`` = 1, m/4, m/2, m).
Then each variant is served by ``leaninfer serve`` in its own subprocess (``--store none --cache-max-bytes 0``:
no ledger, no response cache, so every request reaches the model; priced with ``--usd-per-hour``) and driven
level by level with the project's load generator (``leaninfer.benchmarks.load.loadgen``: closed-loop concurrency levels,
then open-loop Poisson rates). Around each level this process reads the server's ``/metrics`` (cost, busy
seconds, tokens, rows per model call) and both processes' CPU time, and keeps every request's raw sample.

Then, when ``wrk`` is installed, the saturation level: closed loop at ``connections = max_batch_size``, in
``saturation_rounds`` rounds, with the offline bench of the same variant run again (its own process, the
server idle, batch sizes from m/4 up) before the first round and after each (``bracketed_saturation``). The
report sets each round against the runs just before and after it and takes the median round: on a shared VM
the machine's speed drifts by 10-30% over the minutes between the offline bench at the start and the served
levels, as much as the tolerance of the comparison. The Python client spends about 2 ms of CPU per request on
the cores the server needs, which slows every model call and so raises the metered cost (busy time x price); wrk
(C, one thread, pre-built requests: ``launch.run_wrk``) spends a small fraction of that. It posts non-streaming
bodies built from the same prompts the load generator sends (``wrk_bodies``), after a short wrk warm-up. wrk
reports a summary (requests, errors, latency percentiles), not per-request samples, so those rounds have no TTFT,
ITL or goodput; its tokens and cost are the server's ``/metrics`` deltas, read once the server has finished
what wrk left in flight when it stopped (``wait_idle``). Without wrk nothing else changes: the report says the
saturation figure was driven by the Python client. ``serve_load_report`` turns the raw levels into the report;
nothing measured here is derived.

The loop over one Python level mirrors ``loadgen.run_level`` request for request (the same ``one_request``, so TTFT and
ITL are timed exactly as ``leaninfer load`` times them) but keeps the per-request samples, which ``run_level``
folds into percentiles: the report's percentiles, goodput and token counts are recomputed from them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import LeaninferError
from ..hardware import get_profile
from .load import launch
from .load.launch import stop_server
from .load.loadgen import LoadSpec, make_prompt, one_request
from .runner import BenchConfig, _slug, measure_job, parse_variants, run_bench, spawn_worker
from .serve_load_report import build_serve_load_report, write_serve_load_report

METRICS = ("leaninfer_cost_usd_total", "leaninfer_engine_busy_seconds_total", "leaninfer_input_tokens_total",
           "leaninfer_output_tokens_total", "leaninfer_engine_utilization", "leaninfer_engine_call_seconds_total")
WRK_BODIES = 300  # distinct request bodies wrk cycles through
IDLE_POLL_S, IDLE_QUIET_S, IDLE_TIMEOUT_S = 0.1, 1.0, 300.0  # wait_idle


class ServeGroup(BaseModel):
    """One model, its variants and its load levels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(..., description="model reference")
    variants: list[str] = Field(default_factory=lambda: ["fp32"], description="as bench --variants; fp32 added")
    endpoint: str = Field("embeddings", description="embeddings or completions")
    prompt_tokens: int = Field(32, ge=1, description="words per prompt (loadgen.make_prompt)")
    max_tokens: int = Field(32, ge=1, description="completions: new tokens per request (ignore_eos)")
    max_batch_size: int = Field(32, ge=1, description="serve --max-batch-size; the offline bench's largest batch "
                                                     "size, and wrk's connections")
    offline_tokens: int = Field(38, ge=1, description="offline bench: seq_len (embeddings) or prompt_tokens "
                                                      "(generation), the served prompts' mean length in tokens")
    concurrency: list[int] = Field(default_factory=lambda: [1, 8, 32], description="closed-loop client counts")
    rates: list[float] = Field(default_factory=list, description="open-loop Poisson rates, requests/s")
    duration_s: float = Field(5.0, gt=0, description="seconds per level (in-flight requests then finish)")
    wrk_duration_s: float | None = Field(None, gt=0, description="seconds of each wrk round (default: "
                                                                 "duration_s); wrk cuts the requests in flight "
                                                                 "when it stops, so it should span many request "
                                                                 "lifetimes")
    saturation_rounds: int = Field(3, ge=1, description="wrk rounds at saturation, each between two runs of the "
                                                        "offline bench of the same variant (the median round's "
                                                        "ratio is the check)")
    slo_ttft_ms: float | None = Field(None, gt=0, description="goodput: a request meets the SLO if its TTFT is "
                                                              "at most this (generation)")
    slo_e2e_ms: float | None = Field(None, gt=0, description="goodput: ... and its end-to-end latency at most this")


class ServeLoadConfig(BaseModel):
    """The serve-under-load suite's settings (``SUITES['serve-cpu']['serve_load']`` plus the command's flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: list[ServeGroup]
    hardware: str | None = Field(None, description="price the machine as this profile")
    usd_per_hour: float | None = Field(None, ge=0, description="price of this machine, $/hour (overrides)")
    default_hardware: str = Field("aws-c7a.large", description="pricing when neither is given (said in the report)")
    offline_min_time_s: float = Field(1.0, gt=0, description="offline bench: time per configuration")
    offline_gen_repeats: int = Field(2, ge=1, description="offline bench: generation passes")
    server_start_timeout_s: float = Field(180.0, gt=0)
    suite: str | None = None

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise LeaninferError("serve-load config: " + "; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}, got {err.get('input')!r}"
                for err in e.errors())) from None

    def price(self) -> tuple[float, str]:
        """$/hour and what it is: the flag, the named profile, or the suite's default profile (said so)."""
        if self.usd_per_hour is not None:
            return self.usd_per_hour, f"--usd-per-hour {self.usd_per_hour:g}"
        name = self.hardware or self.default_hardware
        prof = get_profile(name)
        if prof.usd_per_hour is None:
            raise LeaninferError(f"hardware profile {name!r} has no price; give --usd-per-hour")
        how = f"priced as {name}" + ("" if self.hardware else " (the suite's default: pass --hardware or "
                                                               "--usd-per-hour to price your machine)")
        return float(prof.usd_per_hour), how


# -- the server ---------------------------------------------------------------------------------------------------
def start_server(ref: str, name: str, price: float, max_batch_size: int, log: Path, timeout_s: float):
    """``leaninfer serve`` in a subprocess (no ledger, no cache: they aren't what is measured); returns
    (process, base URL) once /health answers 200."""
    return launch.start_server([ref, "--name", name, "--store", "none", "--cache-max-bytes", "0",
                                "--usd-per-hour", repr(price), "--max-batch-size", str(max_batch_size)],
                               log=log, cwd=log.parent, env={"PYTHONWARNINGS": "ignore"}, timeout_s=timeout_s)


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """The METRICS series of one served model from Prometheus text (0.0 for a series not yet written), its
    answered requests of every endpoint and status (``leaninfer_requests_total``), and the sum and count of its
    batch sizes per kind of call (``leaninfer_batch_size_sum:decode``, ...)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = dict.fromkeys(METRICS + ("leaninfer_requests_total",), 0.0)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("model") != model:
                continue
            if s.name == "leaninfer_requests_total":
                out[s.name] += float(s.value)
            elif s.name in out:
                out[s.name] = float(s.value)
            elif s.name in ("leaninfer_batch_size_sum", "leaninfer_batch_size_count"):  # rows per model call
                out[f"{s.name}:{s.labels.get('kind')}"] = float(s.value)
    return out


def _scrape(base: str, model: str) -> dict[str, float]:
    import httpx

    return parse_metrics(httpx.get(f"{base}/metrics", timeout=30).text, model)


# -- one level ----------------------------------------------------------------------------------------------------
async def drive_level(spec: LoadSpec, mode: str, level: float) -> tuple[list[dict], float]:
    """One closed-loop (``concurrency``) or Poisson (``rate``) level, as ``loadgen.run_level`` runs it; returns
    every request's raw sample and the level's wall time (first send to last answer)."""
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    samples = []
    counter = iter(range(10**9))
    t0 = time.perf_counter()
    deadline = t0 + spec.duration_s
    async with httpx.AsyncClient(timeout=spec.timeout_s, limits=limits) as client:
        if mode == "concurrency":
            async def worker():
                while time.perf_counter() < deadline:
                    samples.append(await one_request(client, spec, next(counter)))

            await asyncio.gather(*(worker() for _ in range(int(level))))
        else:
            rng = random.Random(0)
            tasks = []
            while time.perf_counter() < deadline:
                tasks.append(asyncio.ensure_future(one_request(client, spec, next(counter))))
                await asyncio.sleep(rng.expovariate(level))
            samples = list(await asyncio.gather(*tasks))
    return [asdict(s) for s in samples], time.perf_counter() - t0


def measure_levels(base: str, name: str, group: ServeGroup, server_pid: int,
                   on_level: Callable[[str], None] | None = None) -> list[dict]:
    """Every level of ``group`` against a running server, after a warm-up level; raw, one dict per level."""
    import psutil

    spec = LoadSpec(base_url=f"{base}/v1", model=name, endpoint=group.endpoint, prompt_tokens=group.prompt_tokens,
                    max_tokens=group.max_tokens, duration_s=group.duration_s, timeout_s=300.0)
    # Warm-up at the highest concurrency: every batch shape the levels will meet has been run once.
    warm = LoadSpec(**{**asdict(spec), "duration_s": min(2.0, group.duration_s)})
    asyncio.run(drive_level(warm, "concurrency", max(group.concurrency or [1])))
    server = psutil.Process(server_pid)
    levels = [("concurrency", float(c)) for c in group.concurrency] + [("rate", float(r)) for r in group.rates]
    out = []
    for mode, level in levels:
        if on_level:
            on_level(f"{name}: {mode} {level:g}")
        m0, s0, c0 = _scrape(base, name), server.cpu_times(), time.process_time()
        samples, wall = asyncio.run(drive_level(spec, mode, level))
        m1, s1, c1 = _scrape(base, name), server.cpu_times(), time.process_time()
        out.append({"mode": mode, "level": level, "client": "loadgen", "duration_s": wall, "samples": samples,
                    "metrics_before": m0, "metrics_after": m1,
                    "server_cpu_s": (s1.user + s1.system) - (s0.user + s0.system), "client_cpu_s": c1 - c0})
    return out


def bracketed_saturation(base: str, name: str, group: ServeGroup, server_pid: int,
                         measure_offline: Callable[[int], dict],
                         on_level: Callable[[str], None] | None = None) -> tuple[list[dict], list[dict]]:
    """The saturation level, bracketed in time by the offline bench: ``group.saturation_rounds`` wrk rounds
    (``wrk_level``), with ``measure_offline(i)`` (the offline bench of the same variant, in its own process,
    while the server idles) run before the first round and after each. Returns (the wrk rounds, the R + 1
    offline measurements).

    Why: on a shared VM the machine's speed drifts by 10-30% over minutes (the same offline bench, repeated
    minutes apart, moved that much while the served figure was being measured), so a served figure set against
    an offline one measured minutes earlier was off by as much as the tolerance. Each round is set against the
    offline runs just before and after it, seconds away; the report takes the median round."""
    import psutil

    server = psutil.Process(server_pid)
    say = on_level or (lambda msg: None)
    rounds, brackets = [], []
    n = group.saturation_rounds
    for i in range(n + 1):
        say(f"{name}: offline bench, bracket {i + 1}/{n + 1}")
        brackets.append(measure_offline(i))
        if i == n:
            break
        say(f"{name}: wrk c={group.max_batch_size}, round {i + 1}/{n}")
        rounds.append({**wrk_level(base, name, group, server, warm_up=i == 0), "round": i + 1, "rounds": n})
    return rounds, brackets


# -- the wrk level ------------------------------------------------------------------------------------------------
def wrk_bodies(group: ServeGroup, name: str, n: int = WRK_BODIES) -> tuple[str, list[dict]]:
    """The path and ``n`` non-streaming request bodies of ``group``'s endpoint, from the prompts the load
    generator sends (``one_request``'s seeds: ``i * 7919`` for embeddings, ``i`` for generation)."""
    if group.endpoint == "embeddings":
        return "/v1/embeddings", [{"model": name, "input": [make_prompt(group.prompt_tokens, i * 7919)]}
                                  for i in range(n)]
    common = {"model": name, "max_tokens": group.max_tokens, "temperature": 0, "ignore_eos": True, "stream": False}
    if group.endpoint == "completions":
        return "/v1/completions", [{**common, "prompt": make_prompt(group.prompt_tokens, i)} for i in range(n)]
    if group.endpoint == "chat":
        return "/v1/chat/completions", [{**common, "messages": [{"role": "user",
                                                                  "content": make_prompt(group.prompt_tokens, i)}]}
                                        for i in range(n)]
    raise LeaninferError(f"wrk level: unknown endpoint {group.endpoint!r} (embeddings, completions, chat)")


_MOVING = ("leaninfer_engine_busy_seconds_total", "leaninfer_requests_total", "leaninfer_cost_usd_total",
           "leaninfer_input_tokens_total", "leaninfer_output_tokens_total")


def wait_idle(base: str, model: str, since: float, timeout_s: float = IDLE_TIMEOUT_S,
              quiet_s: float = IDLE_QUIET_S, poll_s: float = IDLE_POLL_S) -> tuple[dict[str, float], float]:
    """Once a client has stopped (at ``since``, ``time.perf_counter()``), wait until the server has finished
    what it left in flight (run to the end, or stopped as its client left: either way metered): the engine's
    busy seconds, its answered requests, cost and tokens unchanged for ``quiet_s``, longer than one model call
    of the suite's models (busy seconds move after every call). The queue-depth gauge isn't read: a request
    cancelled while queued leaves the queue without updating it. Returns the last ``/metrics`` reading and
    when the counters last moved (``since`` if they never did): the end of the level."""
    last, moved_at = _scrape(base, model), since
    deadline = time.perf_counter() + timeout_s
    while True:
        time.sleep(poll_s)
        m, now = _scrape(base, model), time.perf_counter()
        if any(m[k] != last[k] for k in _MOVING):
            moved_at = now
        elif now - moved_at >= quiet_s:
            return m, moved_at
        if now > deadline:
            raise LeaninferError(f"the server of {model!r} was still busy {timeout_s:.0f} s after the client "
                                 "stopped (its busy seconds, requests or tokens still moving)")
        last = m


def wrk_level(base: str, name: str, group: ServeGroup, server, warm_up: bool = True) -> dict:
    """The closed-loop saturation level driven by wrk (``connections = max_batch_size``, ``wrk_duration_s``),
    after a wrk warm-up (``warm_up``); raw: /metrics before and after, both processes' CPU, wrk's summary, no
    per-request samples. A wrk failure is recorded in the level (``error``), never raised: the Python levels
    are kept."""
    path, bodies = wrk_bodies(group, name)
    c = group.max_batch_size
    raw = {"mode": "wrk", "level": float(c), "client": "wrk", "path": path, "bodies": len(bodies)}
    try:
        if warm_up:
            launch.run_wrk(base, path, bodies, c, min(2.0, group.duration_s))
        seconds = group.wrk_duration_s or group.duration_s
        m0, _ = wait_idle(base, name, time.perf_counter())
        s0, t0 = server.cpu_times(), time.perf_counter()
        res = launch.run_wrk(base, path, bodies, c, seconds)
        m1, end = wait_idle(base, name, time.perf_counter())
        s1 = server.cpu_times()
    except Exception as e:  # wrk missing a line, a server that never settles...: said in the report
        return {**raw, "error": f"{type(e).__name__}: {e}"}
    # The level lasts from wrk's start until the server finished the requests wrk left in flight (their tokens
    # and cost are in the /metrics deltas), as a Python level lasts until its last answer.
    return {**raw, "duration_s": end - t0, "wrk_duration_s": res["duration_us"] / 1e6, "wrk": res,
            "metrics_before": m0, "metrics_after": m1,
            "server_cpu_s": (s1.user + s1.system) - (s0.user + s0.system), "client_cpu_s": res["client_cpu_s"]}


# -- the run ------------------------------------------------------------------------------------------------------
def offline_batch_sizes(max_batch_size: int) -> list[int]:
    """The offline bench's batch sizes: 1, m/4, m/2 and m (m = ``max_batch_size``), so that the report can read
    the offline cost at the batch the server actually ran (its mean rows per model call) between two of them.

    >>> offline_batch_sizes(32), offline_batch_sizes(2)
    ([1, 8, 16, 32], [1, 2])
    """
    m = max_batch_size
    return sorted(b for b in {1, m // 4, m // 2, m} if b > 0)


def _offline_config(group: ServeGroup, cfg: ServeLoadConfig, price: float) -> BenchConfig:
    gen = group.endpoint != "embeddings"
    return BenchConfig(model=group.model, variants=group.variants,
                       batch_sizes=offline_batch_sizes(group.max_batch_size), seq_lens=[group.offline_tokens],
                       prompt_tokens=group.offline_tokens,
                       gen_tokens=group.max_tokens, gen_repeats=cfg.offline_gen_repeats,
                       min_time_s=cfg.offline_min_time_s, usd_per_hour=price,
                       suite=f"{cfg.suite or 'serve-load'} (offline, {'generation' if gen else 'embeddings'})")


def _offline_runs(bench_cfg: BenchConfig, artifact: str | None, group: ServeGroup, offline_dir: Path,
                  name: str) -> Callable[[int], dict]:
    """``measure_offline`` of ``bracketed_saturation``: the offline bench's measuring process for one variant,
    at the bench's batch sizes from m/4 up (the matching batch at saturation lies among them)."""
    job = measure_job(bench_cfg, artifact, [b for b in bench_cfg.batch_sizes if b >= group.max_batch_size // 4])
    return lambda i: spawn_worker("measure", job, offline_dir / "raw" / f"bracket-{name}-{i}.json",
                                  bench_cfg.timeout_s)


def run_serve_load(cfg: ServeLoadConfig, out_dir: str | Path, on_event: Callable[[str], None] | None = None,
                   argv: list[str] | None = None) -> dict:
    """Offline bench, then every variant served and driven level by level; returns the report (also written to
    ``out_dir``: report.md, report.json with every raw sample, cost_under_load.png), rewritten after each variant.

    Example:
        >>> cfg = ServeLoadConfig(groups=[ServeGroup(model="minilm", variants=["onnx+ort-int8"])], usd_per_hour=0.1)
        >>> report = run_serve_load(cfg, "serve-load-out")  # doctest: +SKIP
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    price, priced_as = cfg.price()
    state: dict = {"meta": {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                            "command": shlex.join(argv if argv is not None else ["leaninfer", *sys.argv[1:]]),
                            "config": cfg.model_dump(), "usd_per_hour": price, "priced_as": priced_as,
                            "wrk": shutil.which("wrk")},
                   "groups": []}

    def say(msg: str):
        if on_event:
            on_event(msg)

    def save():
        return write_serve_load_report(build_serve_load_report(state), out)

    for group in cfg.groups:
        specs = parse_variants(group.variants)
        g = {"group": group.model_dump(), "offline_dir": str(out / "offline" / _slug(group.model)), "served": {}}
        state["groups"].append(g)
        say(f"offline bench of {group.model}")
        bench_cfg = _offline_config(group, cfg, price)
        offline = run_bench(bench_cfg, g["offline_dir"],
                            on_event=lambda label, done, total, m=group.model: say(f"offline {m}: {label}"))
        g["offline"] = {v["name"]: v for v in offline["variants"]}
        for s in specs:
            v = g["offline"].get(s.name, {})
            ref = group.model if s.is_baseline else (s.artifact or ((v.get("build") or {}).get("artifact")))
            if not ref:
                g["served"][s.name] = {"status": "failed", "error": f"no artifact: {v.get('error')}"}
                save()
                continue
            name = _slug(s.name)
            say(f"serving {group.model} {s.name}")
            log = out / "raw" / f"serve-{_slug(group.model)}-{name}.log"
            try:
                proc, base = start_server(ref, name, price, group.max_batch_size, log, cfg.server_start_timeout_s)
            except LeaninferError as e:
                g["served"][s.name] = {"status": "failed", "error": str(e), "reference": ref}
                save()
                continue
            try:
                levels = measure_levels(base, name, group, proc.pid, on_level=say)
                g["served"][s.name] = {"status": "ok", "reference": ref, "served_name": name, "levels": levels}
                if shutil.which("wrk"):
                    rounds, brackets = bracketed_saturation(
                        base, name, group, proc.pid,
                        _offline_runs(bench_cfg, None if s.is_baseline else ref, group, Path(g["offline_dir"]), name),
                        on_level=say)
                    levels += rounds
                    g["served"][s.name]["offline_brackets"] = brackets
            except Exception as e:  # a failed variant must not lose the others' measurements
                g["served"][s.name] = {"status": "failed", "error": f"{type(e).__name__}: {e}", "reference": ref}
            finally:
                stop_server(proc)
            (out / "raw").mkdir(exist_ok=True)
            (out / "raw" / f"served-{_slug(group.model)}-{name}.json").write_text(json.dumps(g["served"][s.name]))
            save()
    state["meta"]["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return save()


def serve_load_config(suite: str, settings: dict, others_given: list[str], **flags) -> ServeLoadConfig:
    """The config of a serve-load suite (``settings['serve_load']``) with the command's flags applied: ``hardware``,
    ``usd_per_hour`` and, for every group, ``duration_s``, ``slo_e2e_ms``, ``slo_ttft_ms``. Other bench flags
    (``others_given``) don't apply to a served run: named in the error."""
    if others_given:
        raise LeaninferError(f"--suite {suite} takes its models, variants and levels from the suite; these flags "
                             f"don't apply to it: {', '.join(others_given)} (valid: --hardware, --usd-per-hour, "
                             "--duration-s, --slo-e2e-ms, --slo-ttft-ms, --out)")
    per_group = {k: flags.pop(k) for k in ("duration_s", "slo_e2e_ms", "slo_ttft_ms") if flags.get(k) is not None}
    if "duration_s" in per_group:  # --duration-s sets every level's, the wrk level's included
        per_group["wrk_duration_s"] = per_group["duration_s"]
    groups = [{**g, **per_group} for g in settings["serve_load"]["groups"]]
    top = {k: v for k, v in settings["serve_load"].items() if k != "groups"}
    return ServeLoadConfig(groups=groups, suite=suite, **top, **{k: v for k, v in flags.items() if v is not None})
