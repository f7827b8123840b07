"""Cost plots, one question each.

- ``cost_vs_batch.png``: *on each machine, which variant and batch size is cheapest?* One panel per hardware
  (the measured machine first), one line per variant; measured lines solid, projected ones dashed inside
  their low/high band. A machine appears once: the measured one under its own name, priced as its profile.
- ``cost_vs_load.png``: *at my load, which machine is cheapest?* One line per hardware, its cheapest variant
  at its largest batch size (its capacity, at the headline cost: prefill included for generation), idle time
  paid for below capacity; projected ones as a band.
- ``cost_under_load.png`` (``leaninfer bench --suite serve-cpu``): *what does each variant cost at my load?*
  Served and measured per load level (the wrk saturation level as separate markers), next to the offline figure
  at the batch size the server ran at saturation.

Legends sit outside the axes. The figure functions return matplotlib Figures, so tests inspect them before
anything is written.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..cost import usd_per_1k_tokens
from .advice import options


def curve_series(report: dict) -> list[dict]:
    """One series per (variant, hardware): points (batch, $/1K, tokens/s, $/h, $/1K low, $/1K high), labelled."""
    series: dict[tuple, dict] = {}
    for o in options(report, include_projected=True):
        s = series.setdefault((o.variant, o.hardware, o.label), {"variant": o.variant, "hardware": o.hardware,
                                                                 "label": o.label, "kind": o.kind, "points": []})
        s["points"].append((o.batch_size, o.usd_per_1k_tokens, o.tokens_per_s, o.usd_per_hour,
                            o.usd_per_1k_tokens_low, o.usd_per_1k_tokens_high))
    for s in series.values():
        s["points"].sort()
    return list(series.values())


def load_curve(usd_per_hour: float, capacity_tokens_per_s: float, loads_tokens_per_s) -> list[float]:
    """$ per 1K tokens when `load` tokens/s are offered to machines of `capacity` each (as many as needed).

    Below capacity the one machine idles part of the hour, which is paid for: cost = price / (load x 3600).
    """
    out = []
    for load in loads_tokens_per_s:
        n = max(1, math.ceil(load / capacity_tokens_per_s - 1e-12))
        out.append(usd_per_1k_tokens(usd_per_hour, capacity_tokens_per_s, min(load / (n * capacity_tokens_per_s), 1.0)))
    return out


def _what(series: list[dict]) -> str:
    return "output tokens (whole request)" if series[0]["kind"] == "generation" else "tokens"


def _hardware_order(series: list[dict]) -> list[str]:
    measured = [s["hardware"] for s in series if s["label"] == "measured"]
    rest = [s["hardware"] for s in series if s["label"] != "measured"]
    return list(dict.fromkeys(measured + rest))


def cost_vs_batch_figure(report: dict):
    """The cost-vs-batch Figure (one panel per hardware), or None when nothing is priced."""
    import matplotlib.pyplot as plt

    series = curve_series(report)
    if not series:
        return None
    hardware = _hardware_order(series)
    variants = list(dict.fromkeys(s["variant"] for s in series))
    cmap = plt.get_cmap("tab10")
    color = {v: cmap(i % 10) for i, v in enumerate(variants)}
    ncols = min(len(hardware), 3)
    nrows = math.ceil(len(hardware) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 2.2, 3.4 * nrows), squeeze=False, sharey=True)
    for ax, hw in zip(list(axes.flat)[:len(hardware)], hardware, strict=True):
        label = "measured"
        for s in (s for s in series if s["hardware"] == hw):
            label = s["label"]
            xs = [p[0] for p in s["points"]]
            ys = [p[1] for p in s["points"]]
            if s["label"] == "measured":
                ax.plot(xs, ys, color=color[s["variant"]], linestyle="-", marker="o", label=s["variant"])
            else:
                ax.plot(xs, ys, color=color[s["variant"]], linestyle="--", marker="x", label=s["variant"])
                lo, hi = [p[4] for p in s["points"]], [p[5] for p in s["points"]]
                if all(v is not None for v in lo + hi):
                    ax.fill_between(xs, lo, hi, color=color[s["variant"]], alpha=0.15, linewidth=0)
        ax.set_title(f"{hw}\n({label})", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(hardware):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"$ per 1K {_what(series)}")
    handles = [plt.Line2D([], [], color=color[v], marker="o", label=v) for v in variants]
    handles += [plt.Line2D([], [], color="gray", linestyle="-", label="measured"),
                plt.Line2D([], [], color="gray", linestyle="--", label="projected (band: low-high)")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{report['meta']['config']['model']}: cost per 1K {_what(series)} by batch size, per machine",
                 fontsize=10)
    fig.tight_layout()
    return fig


def cost_vs_load_figure(report: dict):
    """The cost-vs-offered-load Figure (one line per hardware, its cheapest option), or None."""
    import matplotlib.pyplot as plt

    series = [s for s in curve_series(report) if s["points"][-1][2]]
    if not series:
        return None
    best: dict[str, tuple] = {}
    for s in series:
        p = s["points"][-1]  # the largest batch: the machine's capacity with this variant
        if s["hardware"] not in best or p[1] < best[s["hardware"]][1][1]:
            best[s["hardware"]] = (s, p)
    caps = [best[h] for h in _hardware_order(series) if h in best]
    top, low = max(_capacity(p[3], p[1]) for _, p in caps), min(_capacity(p[3], p[1]) for _, p in caps)
    loads = [low / 100 * (10 ** (i / 10)) for i in range(int(10 * math.log10(top * 4 / (low / 100))) + 1)]
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for i, (s, (bs, usd, _tps, price, lo, hi)) in enumerate(caps):
        c = cmap(i % 10)
        ys = load_curve(price, _capacity(price, usd), loads)
        name = f"{s['hardware']}: {s['variant']} @ batch {bs}" + (" (projected)" if s["label"] == "projected" else "")
        ax.plot(loads, ys, color=c, linestyle="-" if s["label"] == "measured" else "--", label=name)
        if s["label"] == "projected" and lo is not None and hi is not None:
            ax.fill_between(loads, load_curve(price, _capacity(price, lo), loads),
                            load_curve(price, _capacity(price, hi), loads), color=c, alpha=0.15, linewidth=0)
    what = _what(series)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"offered load ({what.split(' (')[0]}/s)")
    ax.set_ylabel(f"$ per 1K {what}")
    ax.set_title(f"{report['meta']['config']['model']}: cost vs offered load, cheapest variant per machine\n"
                 "(idle time paid for; more machines past capacity; solid measured, dashed projected)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _capacity(usd_per_hour: float, usd_per_1k: float) -> float:
    """Tokens/s a machine serves at the headline cost: for generation that is whole requests (prefill time
    included), so the curve meets the cost-vs-batch figure at capacity."""
    return usd_per_hour / 3.6 / usd_per_1k


PLOTS = {"cost_vs_batch.png": cost_vs_batch_figure, "cost_vs_load.png": cost_vs_load_figure}


def plot_cost_curves(report: dict, out_dir: str | Path) -> list[str]:
    """Write every plot of PLOTS that has data; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, make in PLOTS.items():
        fig = make(report)
        if fig is None:
            continue
        p = Path(out_dir) / name
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(str(p))
    return paths


def cost_under_load_figure(report: dict):
    """*What does each variant cost at my load?* From a serve-load report (``serve_load_report``): one panel
    per model, x = requests/s served at each load level, y = $ per 1K tokens. Per variant, in its colour: the
    all-in cost (idle time paid for) solid and the server's metered cost (busy time only) dashed over the Python
    client's levels; the wrk level (when it ran) as two unconnected markers, all-in (hollow circle) and metered
    (star); the offline bench's figure as a dotted horizontal line, at the batch size the saturation level is
    compared at (the matching batch: rows per model call over the machine share a call held), else at the max
    batch size.
    None without data."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    groups = [g for g in report["groups"] if any(v["levels"] for v in g["variants"])]
    if not groups:
        return None
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(groups), figsize=(5.0 * len(groups) + 2.5, 4.2), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        for i, v in enumerate(g["variants"]):
            c = cmap(i % 10)
            priced = [lv for lv in v["levels"] if not lv.get("error") and lv["usd_per_1k_tokens_metered"]]
            pts = sorted((lv["requests_per_s"], lv["usd_per_1k_tokens_all_in"], lv["usd_per_1k_tokens_metered"],
                          lv["label"]) for lv in priced if lv["mode"] != "wrk")
            if pts:
                xs = [p[0] for p in pts]
                ax.plot(xs, [p[1] for p in pts], color=c, linestyle="-", marker="o", label=f"{v['name']}: all-in")
                ax.plot(xs, [p[2] for p in pts], color=c, linestyle="--", marker=".", label=f"{v['name']}: metered")
                for x, y, _, label in pts:
                    ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points", color=c)
            for k, lv in enumerate(lv for lv in priced if lv["mode"] == "wrk"):  # one legend entry for its rounds
                x, label = [lv["requests_per_s"]], f"c={lv['level']:g} (wrk)"
                if lv["usd_per_1k_tokens_all_in"] is not None:
                    ax.plot(x, [lv["usd_per_1k_tokens_all_in"]], color=c, linestyle="none", marker="o",
                            markerfacecolor="none", label=None if k else f"{v['name']}: all-in, {label}")
                ax.plot(x, [lv["usd_per_1k_tokens_metered"]], color=c, linestyle="none", marker="*", markersize=9,
                        label=None if k else f"{v['name']}: metered, {label}")
            sat = v.get("saturation")
            if sat:
                off = sat["offline_matching"]
                ax.axhline(off["usd_per_1k_tokens"], color=c, linestyle=":", linewidth=1.5,
                           label=f"{v['name']}: offline, batch {off['batch_size']:.3g} (matching "
                                 f"{sat['level']})")
            elif v.get("offline"):
                ax.axhline(v["offline"]["usd_per_1k_tokens"], color=c, linestyle=":", linewidth=1.5,
                           label=f"{v['name']}: offline, batch {v['offline']['batch_size']}")
        what = "input tokens" if g["endpoint"] == "embeddings" else "output tokens (whole request)"
        ax.set_title(f"{g['model']} ({g['endpoint']})", fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels collide within one decade
        ax.set_xlabel("load: requests/s served (c=N closed loop, N req/s Poisson; markers: c=N driven by wrk)")
        ax.set_ylabel(f"$ per 1K {what}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    fig.suptitle(f"cost per 1K tokens against load, served on one machine at ${report['usd_per_hour']:g}/h "
                 "(solid, o: all-in, idle paid; dashed, *: metered busy time; dotted: offline bench)", fontsize=9)
    fig.tight_layout()
    return fig
