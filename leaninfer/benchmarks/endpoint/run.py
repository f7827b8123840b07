"""``bench --endpoint`` from flags to files: check everything a user gave before the first request, sweep,
price, then write the tariff file and the report, each whole or not at all.

Example:
    >>> cfg = EndpointBenchConfig(endpoint="http://127.0.0.1:8000/v1", model="minilm", usd_per_hour=0.1)
    >>> doc = measure_endpoint(cfg, "bench-out")  # doctest: +SKIP
    >>> doc["tariff"]["usd_per_1k_input_tokens"]  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from ...endpoint import api_key_from_env, open_endpoint
from ...errors import LeaninferError
from ...finops.price_list import save_price_list
from ...hardware import detect_local
from ...latency import MIN_SAMPLES_FOR_PERCENTILES
from .report import compare_rows, load_tariffs, write_endpoint_report
from .sweep import EndpointBenchConfig, run_sweep, tariff_of

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def default_tariff_path(out_dir: str | Path, model: str) -> Path:
    """``OUT/tariff-<model>.yaml``, the model id made a file name.

    >>> default_tariff_path("out", "Qwen/Qwen2.5-0.5B-Instruct").as_posix()
    'out/tariff-Qwen-Qwen2.5-0.5B-Instruct.yaml'
    """
    return Path(out_dir) / f"tariff-{re.sub(r'[^A-Za-z0-9._-]', '-', model)}.yaml"


def _writable(path: Path, flag: str) -> None:
    """Fail before the sweep where the file could not be written after it."""
    if path.is_dir():
        raise LeaninferError(f"{flag} {str(path)!r} is a folder; give a file name such as tariff.yaml")
    folder = path.resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise LeaninferError(f"{flag} {str(path)!r}: can't write in {str(folder)!r}")


def measure_endpoint(cfg: EndpointBenchConfig, out_dir: str | Path, *, key_env: str | None = None,
                     tariff_out: str | Path | None = None, compare: list[str] | None = None,
                     argv: list[str] | None = None,
                     on_event: Callable[[str], None] | None = None) -> dict:
    """Sweep ``cfg.endpoint``, write its tariff file (``tariff_out``, default :func:`default_tariff_path`) and
    the report (``out_dir``); ``compare``: tariff files set beside it in the report, priced for the traffic just
    measured (the saturation level's tokens per request). Returns the report."""
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    price, hardware = cfg.price()
    api_key = api_key_from_env(key_env)
    tariff_path = Path(tariff_out) if tariff_out is not None else default_tariff_path(out_dir, cfg.model)
    _writable(tariff_path, "--tariff-out")
    _writable(Path(out_dir) / "report.md", "--out")
    others = load_tariffs(compare or [])  # a bad file fails now, not after the sweep
    ep = open_endpoint(cfg.endpoint, cfg.model, task=cfg.task, api_key=api_key)
    host = urlsplit(ep.base_url).hostname or ""
    deduct = cfg.deduct_client_cpu if cfg.deduct_client_cpu is not None else host in LOCAL_HOSTS
    rows, warm_up = run_sweep(ep, cfg, price, on_event=on_event, deduct_client_cpu=deduct)
    tariff = tariff_of(ep, rows, price, hardware)
    notes = []
    if host in LOCAL_HOSTS and deduct:
        notes.append("the load generator shared the endpoint's machine: its CPU share of each level (a few ms per "
                     "request in Python) was deducted from the hour priced, since an engine whose clients run "
                     "elsewhere doesn't pay it (the raw prices are kept as *_with_client; --keep-client-cpu "
                     "prices the whole hour)")
    elif host in LOCAL_HOSTS:
        notes.append("the load generator shared the endpoint's machine: its CPU time (a few ms per request in "
                     "Python) was taken from the engine's, so this tariff is an upper bound for an engine whose "
                     "clients run elsewhere")
    few = [f"c={r['concurrency']} ({r['requests']})" for r in rows if r["requests"] < MIN_SAMPLES_FOR_PERCENTILES]
    if few:
        notes.append(f"p99 latencies rest on fewer than {MIN_SAMPLES_FOR_PERCENTILES} requests at {', '.join(few)}: "
                     "read them as the maximum; a longer --duration-s gives a tail")
    if any(r.get("split_clamped") for r in rows):
        notes.append("at some levels the prefill probe's input cost exceeded the whole decode level's machine "
                     "cost: input took it all and output was priced 0 there (split_clamped)")
    doc = {"kind": "endpoint-tariff",
           "meta": {"command": shlex.join(argv if argv is not None else ["leaninfer", *sys.argv[1:]]),
                    "started": started,
                    "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "endpoint": ep.base_url, "task_from": "the endpoint's model card" if ep.card.get("task")
                    else "--task", "client_cpu": detect_local().cpu_name, "client_is_local": host in LOCAL_HOSTS,
                    "duration_s": cfg.duration_s, "max_tokens": cfg.max_tokens,
                    "prompts": (f"{len(cfg.texts)} texts given" if cfg.texts
                                else f"generated prompts of {cfg.prompt_tokens} words"),
                    "config": cfg.model_dump(exclude={"texts"}), "key_env": key_env,
                    "tariff_file": str(tariff_path)},
           "warm_up": warm_up, "levels": rows, "tariff": tariff.model_dump(mode="json"), "notes": notes}
    if others:  # priced for the traffic just measured: the saturation level's tokens per request
        sat = tariff.level
        shape = (sat["input_tokens_per_s"] / sat["requests_per_s"], sat["output_tokens_per_s"] / sat["requests_per_s"])
        mine = (tariff_path.name + " (this run)", tariff)
        doc["compare"] = {"rows": compare_rows([mine, *others], *shape), "input_tokens": round(shape[0], 1),
                          "output_tokens": round(shape[1], 1)}
    tariff_path.parent.mkdir(parents=True, exist_ok=True)
    save_price_list(tariff, tariff_path)
    write_endpoint_report(doc, out_dir)
    return doc
