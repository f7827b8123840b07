"""The report of ``bench --endpoint`` (report.md, report.json) and the table that sets tariff files side by side
(``bench --compare-tariffs``): local variants measured behind ``leaninfer serve``, self-hosted engines measured
by ``bench --endpoint`` and hosted APIs priced by hand from their list prices, cheapest first for a traffic shape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ...finops.price_list import PriceList, load_price_list
from .pricing import PRICING_RULE


def _f(x, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def _usd(x) -> str:
    """A per-1K price: enough digits to be read (they are small)."""
    return "–" if x is None else f"{x:.3g}"


def usd_per_1k_requests(p: PriceList, input_tokens: float, output_tokens: float) -> float:
    """What 1,000 requests of this shape cost at this tariff.

    >>> p = PriceList(model="m", usd_per_1k_input_tokens=0.001, usd_per_1k_output_tokens=0.002, source="list")
    >>> round(usd_per_1k_requests(p, 500, 100), 6)   # (500 x 0.001 + 100 x 0.002) / 1K tokens x 1K requests
    0.7
    """
    return input_tokens * p.usd_per_1k_input_tokens + output_tokens * p.usd_per_1k_output_tokens


def compare_rows(tariffs: list[tuple[str, PriceList]], input_tokens: float | None = None,
                 output_tokens: float = 0.0) -> list[dict]:
    """One row per tariff, grouped by task, cheapest first: by $ per 1K requests of ``input_tokens`` in and
    ``output_tokens`` out when a traffic shape is given, else by the input price, then the output price."""
    rows = []
    for name, p in tariffs:
        lv = p.level or {}
        rows.append({"name": name, "model": p.model, "task": p.task or "?", "source": p.source,
                     "hardware": p.hardware, "usd_per_hour": p.usd_per_hour,
                     "usd_per_1k_input_tokens": p.usd_per_1k_input_tokens,
                     "usd_per_1k_output_tokens": p.usd_per_1k_output_tokens,
                     "concurrency": lv.get("concurrency"), "measured_at": p.measured_at,
                     "quality": p.quality,
                     "usd_per_1k_requests": (usd_per_1k_requests(p, input_tokens, output_tokens)
                                             if input_tokens is not None else None)})
    rows.sort(key=lambda r: (r["task"], r["usd_per_1k_requests"] if input_tokens is not None else 0.0,
                             r["usd_per_1k_input_tokens"], r["usd_per_1k_output_tokens"]))
    return rows


def compare_markdown(rows: list[dict], input_tokens: float | None = None, output_tokens: float = 0.0) -> list[str]:
    """The side-by-side table as Markdown lines."""
    shape = (f"; $/1K req: 1,000 requests of {input_tokens:g} input + {output_tokens:g} output tokens"
             if input_tokens is not None else "")
    lines = ["## Tariffs side by side", "",
             f"Cheapest first within a task{shape}. measured: `bench --endpoint` on the machine priced at its "
             "$/hour; list: a hosted API's prices, written by hand.", "",
             "| tariff | model | task | source | hardware | $/hour | $/1K in | $/1K out | $/1K req | level | "
             "measured | quality |", "|" + " --- |" * 12]
    for r in rows:
        q = ", ".join(f"{k} {v:.4g}" for k, v in (r["quality"] or {}).items()) or "–"
        when = str(r["measured_at"])[:10] if r["measured_at"] else "–"  # a datetime, or its JSON string
        lines.append(f"| {r['name']} | {r['model']} | {r['task']} | {r['source']} | {r['hardware'] or '–'} | "
                     f"{_f(r['usd_per_hour'], 'g')} | {_usd(r['usd_per_1k_input_tokens'])} | "
                     f"{_usd(r['usd_per_1k_output_tokens'])} | {_usd(r['usd_per_1k_requests'])} | "
                     f"{'c=' + str(r['concurrency']) if r['concurrency'] is not None else '–'} | {when} | {q} |")
    return lines + [""]


def load_tariffs(paths: list[str | Path]) -> list[tuple[str, PriceList]]:
    """Each file read and checked (a bad one is an error naming it), named by its file name."""
    return [(Path(p).name, load_price_list(p)) for p in paths]


def to_markdown(doc: dict) -> str:
    meta, rows, t = doc["meta"], doc["levels"], doc["tariff"]
    task = t["task"]
    gen = task != "embedding"
    sat = t["level"]["concurrency"]
    lines = [f"# leaninfer bench --endpoint: {t['model']} at {meta['endpoint']}", "",
             f"- command: `{meta['command']}`",
             f"- started {meta['started']}, finished {meta['finished']}",
             f"- endpoint: {meta['endpoint']}, model {t['model']!r}, task {task} ({meta['task_from']})",
             f"- priced at ${t['usd_per_hour']:g}/hour" + (f" (hardware profile {t['hardware']})" if t["hardware"]
                                                          else " (--usd-per-hour)"),
             f"- client: the load generator ran on {meta['client_cpu']}"
             + (" — the same machine as the endpoint" if meta["client_is_local"] else ""),
             f"- levels: closed loop, {meta['duration_s']:g} s each; {meta['prompts']}"
             + (f"; max_tokens {meta['max_tokens']} (ignore_eos)" if gen else ""), ""]
    lines += ["## Levels", "", "`*` marks the saturation level, the tariff's. $ are the machine's cost of the "
              "level over the tokens it delivered" + ("; metered: the server's own meter (usage.leaninfer)"
                                                       if any("metered_usd" in r for r in rows) else "") + ".", ""]
    cols = ["c", "req/s", "errors", "in tok/s"] + (["out tok/s"] if gen else []) + ["latency p50 / p99 ms"]
    cols += ["TTFT p50 / p99 ms", "ITL p50 / p99 ms"] if gen else []
    cols += ["$/1K in"] + (["$/1K out"] if gen else [])
    has_meter = any("metered_usd" in r for r in rows)
    if has_meter:
        cols += ["metered $/1K in"] + (["metered $/1K out"] if gen else []) + ["metered / machine"]
    local = meta["client_is_local"]
    if local:
        cols += ["client CPU share"]
    lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        cells = [f"{r['concurrency']}{'*' if r['concurrency'] == sat else ''}", _f(r["requests_per_s"]),
                 f"{r['errors']}/{r['requests']}", _f(r["input_tokens_per_s"], ".0f")]
        cells += [_f(r["output_tokens_per_s"], ".0f")] if gen else []
        cells += [f"{_f(r['latency_p50_ms'])} / {_f(r['latency_p99_ms'])}"]
        if gen:
            cells += [f"{_f(r['ttft_p50_ms'])} / {_f(r['ttft_p99_ms'])}", f"{_f(r['itl_p50_ms'])} / {_f(r['itl_p99_ms'])}"]
        cells += [_usd(r["usd_per_1k_input_tokens"])] + ([_usd(r["usd_per_1k_output_tokens"])] if gen else [])
        if has_meter:
            cells += [_usd(r.get("metered_usd_per_1k_input_tokens"))]
            cells += [_usd(r.get("metered_usd_per_1k_output_tokens"))] if gen else []
            cells += [_f(r.get("metered_usd_over_machine_usd"), ".3f")]
        if local:
            cells += [_f(r.get("client_cpu_share"), ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Tariff", "",
              f"- **${t['usd_per_1k_input_tokens']:.4g} per 1K input tokens** "
              f"(${1000 * t['usd_per_1k_input_tokens']:.4g} per 1M)"
              + (f", **${t['usd_per_1k_output_tokens']:.4g} per 1K output tokens** "
                 f"(${1000 * t['usd_per_1k_output_tokens']:.4g} per 1M)" if gen else "")
              + f", from c={sat} ({t['level']['saturation_rule']})",
              f"- written to `{meta['tariff_file']}` (use it as `leaninfer serve --upstream NAME=URL,tariff=FILE`)",
              f"- rule: {PRICING_RULE[task]}"]
    lv = t["level"]
    if lv.get("metered_usd") is not None:
        lines.append(f"- the server's own meter over the same level: {lv['metered_usd_over_machine_usd']:.3f} of "
                     "the machine's cost at this $/hour (equal to the engine's busy share when the server runs at "
                     "the same $/hour): the tariff prices every second of the paid hour, the meter only the "
                     "seconds inside model calls; they agree when the engine is busy all through the level"
                     + (f"; the load generator took {lv['client_cpu_share']:.3f} of this machine's CPU over it, "
                        "time the engine could not use" if local and lv.get("client_cpu_share") is not None
                        else ""))
    for n in doc.get("notes", []):
        lines.append(f"- note: {n}")
    lines.append("")
    if doc.get("compare"):
        c = doc["compare"]
        lines += compare_markdown(c["rows"], c.get("input_tokens"), c.get("output_tokens") or 0.0)
    return "\n".join(lines) + "\n"


def _json_default(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    return str(o)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_endpoint_report(doc: dict, out_dir: str | Path) -> Path:
    """report.json and report.md in ``out_dir``, each whole or not at all; returns report.md's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "report.json", json.dumps(doc, indent=1, default=_json_default))
    _atomic_write(out / "report.md", to_markdown(doc))
    return out / "report.md"
