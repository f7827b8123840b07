"""Every plot answers one question: panels per machine, measured solid, projected as a band, legend outside."""

import matplotlib

matplotlib.use("Agg")

from leaninfer.benchmarks.plots import cost_vs_batch_figure, cost_vs_load_figure, plot_cost_curves  # noqa: E402
from leaninfer.benchmarks.report import build_report  # noqa: E402

from .fakes import MODEL, embedding_result, run, state  # noqa: E402

EMB = {**MODEL, "task": "embedding"}
MEASURED = "AMD EPYC 9R14, 2 cores (zen4)"


def _report(**config):
    specs = [{"name": "fp32", "steps": [], "artifact": None}, {"name": "fp16", "steps": [{"step": "fp16"}],
                                                               "artifact": None}]
    measures = {"fp32": [run([embedding_result(b, 16, [0.01 * b] * 10) for b in (1, 2, 4)], model=EMB)],
                "fp16": [run([embedding_result(b, 16, [0.02 * b] * 10) for b in (1, 2, 4)],
                             model={**EMB, "state": "torch:fp16", "precision": "fp16"}, weight_bytes=2000)]}
    return build_report(state(measures, specs=specs, **config))


def test_cost_vs_batch_one_panel_per_machine():
    report = _report(hardware="aws-c7a.large", project_to=["aws-c7a.large", "aws-c7a.2xlarge", "h100-sxm"])
    fig = cost_vs_batch_figure(report)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title().split("\n")[0] for ax in axes]
    # the measured machine once (priced as aws-c7a.large, which is therefore not projected), then projections
    assert titles == [MEASURED, "aws-c7a.2xlarge", "h100-sxm"]
    measured, cpu_proj, gpu_proj = axes
    assert [line.get_label() for line in measured.lines] == ["fp32", "fp16"]
    assert {line.get_linestyle() for line in measured.lines} == {"-"}
    assert not measured.collections  # measured: no band
    # projected lines dashed, each in its band; FP16 is not projected to a CPU without an FP16 peak
    assert [(line.get_label(), line.get_linestyle()) for line in cpu_proj.lines] == [("fp32", "--")]
    assert len(cpu_proj.collections) == 1
    assert [line.get_label() for line in gpu_proj.lines] == ["fp32", "fp16"] and len(gpu_proj.collections) == 2
    assert [len(line.get_xdata()) for line in measured.lines] == [3, 3]
    assert measured.get_ylabel().startswith("$ per 1K tokens")
    # the legend is the figure's, to the right of every panel
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["fp32", "fp16", "measured", "projected (band: low-high)"]
    fig.canvas.draw()
    right_of_panels = max(ax.get_window_extent().x1 for ax in axes)
    assert legend.get_window_extent().x0 >= right_of_panels


def test_cost_vs_load_cheapest_variant_per_machine():
    report = _report(usd_per_hour=0.36, project_to=["aws-c7a.2xlarge"])
    fig = cost_vs_load_figure(report)
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.lines]
    # one line per machine, its cheapest variant (fp32 is twice as fast as fp16 here) at its largest batch
    assert labels == [f"{MEASURED}: fp32 @ batch 4", "aws-c7a.2xlarge: fp32 @ batch 4 (projected)"]
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--"]
    assert len(ax.collections) == 1  # the projected line's band
    legend = ax.get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1


def test_plot_files_written(tmp_path):
    paths = plot_cost_curves(_report(usd_per_hour=0.36), tmp_path)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["cost_vs_batch.png", "cost_vs_load.png"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("cost_vs_batch.png", "cost_vs_load.png"))


def test_nothing_priced_draws_nothing(tmp_path):
    report = _report()
    assert cost_vs_batch_figure(report) is None and plot_cost_curves(report, tmp_path) == []
