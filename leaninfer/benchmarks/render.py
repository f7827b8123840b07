"""A bench report as Markdown: the run's context, one table per workload, projections, advice and notes."""

from __future__ import annotations

from pathlib import Path


def _fmt(x, spec=".1f", none="–"):
    return none if x is None else format(x, spec)


def _pct(fraction: float | None) -> str:
    return _fmt(fraction and 100 * fraction)


def to_markdown(report: dict) -> str:
    lines = _context(report)
    emb = [(v, r) for v in report["variants"] for r in v.get("results", []) if r["kind"] == "embedding"]
    gen = [(v, r) for v in report["variants"] for r in v.get("results", []) if r["kind"] == "generation"]
    if emb:
        lines += _embeddings(report["hardware"], emb)
    if gen:
        lines += _generation(gen)
    if emb or gen:
        lines += _statistics(emb + gen) + _memory(report["variants"])
    other = [v for v in report["variants"] if v.get("status") not in ("ok",)]
    if other:
        lines += ["## Not measured", ""]
        for v in other:
            lines.append(f"- {v['name']}: {v.get('status')}" + (f" ({v['error']})" if v.get("error") else ""))
        lines.append("")
    if report["projections"]:
        lines += _projections(report)
    lines += ["## Advice", "", report["advice"]["text"], ""]
    for n in report.get("notes", []):
        lines.append(f"- note: {n}")
    for v in report["variants"]:
        for n in v.get("notes") or []:
            lines.append(f"- {v['name']}: {n}")
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _context(report: dict) -> list[str]:
    """Command, machine, bandwidth, peaks, price and versions: what a reader needs to trust the tables."""
    meta, hw, cfg = report["meta"], report["hardware"], report["meta"]["config"]
    local = hw.get("local") or {}
    lines = [f"# leaninfer bench: {cfg['model']}", ""]
    lines.append(f"- command: `{meta['command']}`")
    lines.append(f"- started {meta['started']}, " + (f"finished {meta['finished']}" if meta.get("finished")
                                                        else "**partial: the run did not finish**"))
    if local:
        lines.append(f"- measured on: {hw['name']} (INT8 path {local.get('int8_isa')}, ISA "
                     f"{' '.join(local.get('isa', []))}, {local.get('cpu_mhz')} MHz), {report['threads']} threads")
    bw = report.get("bandwidth") or {}
    if bw:
        lines.append(f"- memory bandwidth (measured): read {bw['read_gb_per_s']:.1f} GB/s, copy {bw['copy_gb_per_s']:.1f} GB/s")
    peaks = hw.get("peak_tflops_per_s") or {}
    if peaks:
        lines.append(f"- peak compute ({hw.get('peak_source')}): " + ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in peaks.items()))
    prof = hw["profile"]
    lines.append("- price: " + (f"${prof['usd_per_hour']}/h, priced as {hw['priced_as']} ({prof.get('price_source')}, "
                                 f"{prof.get('price_date')}{', an estimate, not a list price' if prof.get('price_estimate') else ''}"
                                 f"), utilization {cfg['utilization']}" if hw["priced"]
                                 else "unpriced (pass --usd-per-hour or --hardware PROFILE)"))
    lv = report.get("library_versions") or {}
    if lv:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in lv.items()))
    lines.append("- each variant: its own fresh process, warm-up, then repeats; medians and p95 of all samples"
                 + (f" pooled over {cfg['rounds']} interleaved rounds" if cfg.get("rounds", 1) > 1 else ""))
    lines.append("")
    return lines


def _embeddings(hw: dict, rows: list[tuple[dict, dict]]) -> list[str]:
    cost_col = f"$/1K tok (priced as {hw['priced_as']})" if hw["priced"] else "$/1K tok"
    lines = ["## Embeddings", "",
             f"| variant | batch | seq | p50 ms | p95 ms | tokens/s | seq/s | × FP32 | quality vs FP32 | weights MB "
             f"| {cost_col} | % mem bound | % compute bound |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for v, r in rows:
        ratio = (r.get("ratio_to_fp32") or {}).get("tokens_per_s")
        rf = r["roofline"]
        lines.append(
            f"| {v['name']} | {r['batch_size']} | {r['seq_len']} | {r['latency']['p50_ms']:.2f} | {r['latency']['p95_ms']:.2f} "
            f"| {r['tokens_per_s']:,.0f} | {r['sequences_per_s']:,.1f} | {_fmt(ratio, '.2f')}× | {v['quality_summary']} "
            f"| {v['weight_bytes'] / 1e6:.1f} "
            f"| {_fmt(r['cost'] and r['cost']['usd_per_1k_tokens'], '.3g')} "
            f"| {_pct(rf['fraction_of_memory_bound'])} | {_pct(rf['fraction_of_compute_bound'])} |")
    lines.append("")
    return lines


def _generation(rows: list[tuple[dict, dict]]) -> list[str]:
    lines = ["## Generation (greedy, KV cache)", "",
             "| variant | batch | prompt | new | TTFT p50 ms | ITL p50 ms | ITL p95 ms | decode tok/s | × FP32 "
             "| input tok/s | output tok/s (end to end) | quality vs FP32 | weights MB | $/1K out tok (request) "
             "| $/1K in tok | $/1K decode tok | % mem bound (decode) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for v, r in rows:
        ratio = (r.get("ratio_to_fp32") or {}).get("decode_tokens_per_s")
        it = r.get("inter_token") or {}
        c = r.get("cost") or {}
        lines.append(
            f"| {v['name']} | {r['batch_size']} | {r['prompt_tokens']} | {r['gen_tokens']} | {r['ttft']['p50_ms']:.1f} "
            f"| {_fmt(it.get('p50_ms'), '.2f')} | {_fmt(it.get('p95_ms'), '.2f')} "
            f"| {_fmt(r['decode_tokens_per_s'], ',.1f')} "
            f"| {_fmt(ratio, '.2f')}× | {r['input_tokens_per_s']:,.0f} | {r['output_tokens_per_s']:,.1f} "
            f"| {v['quality_summary']} | {v['weight_bytes'] / 1e6:.1f} "
            f"| {_fmt(c.get('usd_per_1k_output_tokens'), '.3g')} | {_fmt(c.get('usd_per_1k_input_tokens'), '.3g')} "
            f"| {_fmt(c.get('usd_per_1k_decode_tokens'), '.3g')} | {_pct(r['roofline']['fraction_of_memory_bound'])} |")
    lines.append("")
    return lines


def _statistics(rows: list[tuple[dict, dict]]) -> list[str]:
    """n, percentiles and spread of every timed quantity; a percentile on fewer than 10 samples is flagged."""
    lines = ["## Latency statistics (ms)", "",
             "| variant | batch | quantity | n | p50 | p90 | p95 | p99 | stdev | min | max |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v, r in rows:
        for what, d in (("batch latency", r.get("latency")), ("TTFT", r.get("ttft")),
                        ("inter-token", r.get("inter_token"))):
            if not d or not d.get("n"):
                continue
            flag = " (n < 10)" if d["n"] < 10 else ""
            lines.append(f"| {v['name']} | {r['batch_size']} | {what} | {d['n']}{flag} | {_fmt(d['p50_ms'], '.2f')} "
                         f"| {_fmt(d.get('p90_ms'), '.2f')} | {_fmt(d.get('p95_ms'), '.2f')} | {_fmt(d.get('p99_ms'), '.2f')} "
                         f"| {_fmt(d.get('stdev_ms'), '.2f')} | {_fmt(d.get('min_ms'), '.2f')} | {_fmt(d.get('max_ms'), '.2f')} |")
    lines.append("")
    return lines


def _memory(variants: list[dict]) -> list[str]:
    mb = lambda x: _fmt(x and x / 1e6)  # noqa: E731
    rows = [v for v in variants if v.get("memory")]
    if not rows:
        return []
    lines = ["## Memory (MB; median over the measuring processes)", "",
             "| variant | weights | baseline RSS | model RSS | peak RSS | CUDA allocated after load | CUDA max allocated "
             "| CUDA max reserved |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in rows:
        m = v["memory"]
        lines.append(f"| {v['name']} | {mb(v['weight_bytes'])} | {mb(m.get('baseline_rss_bytes'))} "
                     f"| {mb(m.get('model_rss_bytes'))} | {mb(m.get('peak_rss_bytes'))} "
                     f"| {mb(m.get('cuda_allocated_after_load_bytes'))} | {mb(m.get('cuda_max_allocated_bytes'))} "
                     f"| {mb(m.get('cuda_max_reserved_bytes'))} |")
    note = rows[0]["memory"].get("note")
    lines += (["", note[0].upper() + note[1:] + "."] if note else []) + [""]
    return lines


def _projections(report: dict) -> list[str]:
    lines = ["## Projected to other hardware (not measured)", "", f"Model: {report['projection_model']}.",
             "Projected rows enter the advice only with --include-projected. Calibration data: "
             + "; ".join(sorted({p["calibration_source"] for p in report["projections"]})) + ".", "",
             "| variant | hardware | batch | label | tokens/s [low–high] | p95 ms | $/1K tok [low–high] | calibration |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for p in report["projections"]:
        tps = p.get("tokens_per_s") or p.get("decode_tokens_per_s")
        lo = p.get("tokens_per_s_low") or p.get("decode_tokens_per_s_low")
        hi = p.get("tokens_per_s_high") or p.get("decode_tokens_per_s_high")
        usd = (f"{p['usd_per_1k_tokens']:.3g} [{p['usd_per_1k_tokens_low']:.3g}–{p['usd_per_1k_tokens_high']:.3g}]"
               if p.get("usd_per_1k_tokens") is not None else "–")
        rate = f"{tps:,.0f} [{lo:,.0f}–{hi:,.0f}]" if tps else "–"
        lines.append(f"| {p['variant']} | {p['hardware']} | {p['batch_size']} | projected | {rate} "
                     f"| {_fmt(p['p95_ms'], '.2f')} | {usd} | {p['calibration']} |")
    lines.append("")
    return lines
