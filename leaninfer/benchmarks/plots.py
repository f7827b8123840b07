"""Hardware cost curves: $ per 1K tokens against batch size and against offered load.

Measured hardware is drawn solid; projected hardware dashed, with "(projected)" in its legend label.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..cost import usd_per_1k_tokens
from .advice import options


def curve_series(report: dict) -> list[dict]:
    """One series per (variant, hardware): batch sizes and $/1K tokens, labelled measured or projected."""
    series: dict[tuple, dict] = {}
    for o in options(report):
        s = series.setdefault((o.variant, o.hardware, o.label), {"variant": o.variant, "hardware": o.hardware,
                                                                 "label": o.label, "kind": o.kind, "points": []})
        s["points"].append((o.batch_size, o.usd_per_1k_tokens, o.tokens_per_s, o.usd_per_hour))
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


def plot_cost_curves(report: dict, out_dir: str | Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = curve_series(report)
    if not series:
        return []
    out_dir = Path(out_dir)
    model = report["meta"]["config"]["model"]
    kind = series[0]["kind"]
    what = "output tokens" if kind == "generation" else "tokens"
    paths = []
    colors = {}
    cmap = plt.get_cmap("tab10")

    def style(s):
        c = colors.setdefault(s["hardware"], cmap(len(colors) % 10))
        return {"color": c, "linestyle": "-" if s["label"] == "measured" else "--",
                "marker": "o" if s["label"] == "measured" else "x"}

    markers = {}
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in series:
        xs = [p[0] for p in s["points"]]
        ys = [p[1] for p in s["points"]]
        st = style(s)
        st["marker"] = markers.setdefault(s["variant"], "osD^v<>ph*"[len(markers) % 10])
        ax.plot(xs, ys, label=f"{s['variant']} · {s['hardware']}" + (" (projected)" if s["label"] == "projected" else ""),
                **st)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"$ per 1K {what}")
    ax.set_title(f"{model}: cost per 1K {what} vs batch size\nsolid = measured, dashed = projected (roofline scaling)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    p = out_dir / "cost_vs_batch.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))

    # Against offered load: each option at its largest measured batch size (its capacity).
    fig, ax = plt.subplots(figsize=(8, 5))
    caps = [(s, s["points"][-1]) for s in series if s["points"][-1][2]]
    if caps:
        top = max(c[1][2] for c in caps)
        low = min(c[1][2] for c in caps)
        loads = [low / 100 * (10 ** (i / 10)) for i in range(int(10 * math.log10(top * 4 / (low / 100))) + 1)]
        for s, (bs, _usd, cap, price) in caps:
            st = style(s)
            st["marker"] = None
            ax.plot(loads, load_curve(price, cap, loads), **st,
                    label=f"{s['variant']} · {s['hardware']} @ batch {bs}" + (" (projected)" if s["label"] == "projected" else ""))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"offered load ({what}/s)")
        ax.set_ylabel(f"$ per 1K {what}")
        ax.set_title(f"{model}: cost vs offered load (idle time paid for; more machines past capacity)\n"
                     "solid = measured, dashed = projected", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        p = out_dir / "cost_vs_load.png"
        fig.savefig(p, dpi=110)
        paths.append(str(p))
    plt.close(fig)
    return paths
