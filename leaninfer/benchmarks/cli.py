"""CLI commands of the benchmarks job: bench, curves, forecast, hardware. Registered by leaninfer.cli."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..data import read_texts
from ..errors import LeaninferError
from ..hardware import detect_local, hardware_listing, load_profiles
from ..listing import DATA, NAME, TEXT, listing_table, print_listing
from .endpoint.report import compare_markdown, compare_rows, load_tariffs
from .endpoint.run import measure_endpoint
from .endpoint.sweep import EndpointBenchConfig
from .forecast import DEFAULT_MAX_UTILIZATION, forecast
from .report import load_report
from .runner import BenchConfig, recompute, run_bench
from .serve_load import run_serve_load, serve_load_config
from .suites import get_suite

console = Console(stderr=True)
out = Console()


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _flag(field: str, flag: str | None = None, **kw):
    """An option for a BenchConfig field: flag from the field name, help from its description.

    The default is None, so a flag not given leaves the suite's setting or the config's default in place.
    """
    return typer.Option(None, flag or "--" + field.replace("_", "-"),
                        help=BenchConfig.model_fields[field].description, **kw)


def register(app: typer.Typer, user_errors) -> None:
    @app.command("bench")
    @user_errors
    def bench_cmd(
        model: str = _flag("model"),
        variants: str = _flag("variants"),
        suite: str = typer.Option(None, "--suite", help="cpu-quick, llm-cpu, gpu, tiny, or serve-cpu (served cost "
                                                                 "against load): defaults for every flag"),
        batch_sizes: str = _flag("batch_sizes"),
        seq_lens: str = _flag("seq_lens"),
        prompt_tokens: int = _flag("prompt_tokens", min=1),
        gen_tokens: int = _flag("gen_tokens", min=1),
        hardware: str = _flag("hardware"),
        usd_per_hour: float = _flag("usd_per_hour", min=0),
        profiles: Path = _flag("profiles_yaml", "--profiles"),
        project_to: str = _flag("project_to"),
        include_projected: bool = typer.Option(None, "--include-projected/--measured-only",
                                               help=BenchConfig.model_fields["include_projected"].description),
        utilization: float = _flag("utilization"),
        max_p95_ms: float = _flag("max_p95_ms"),
        min_cosine: float = _flag("min_cosine"),
        max_sts_drop: float = _flag("max_sts_drop"),
        max_ppl_increase_pct: float = _flag("max_ppl_increase_pct"),
        sts: Path = _flag("sts"),
        threads: int = _flag("threads", min=1),
        device: str = _flag("device"),
        rounds: int = _flag("rounds", min=1),
        min_time_s: float = _flag("min_time_s"),
        out_dir: Path = typer.Option(Path("leaninfer-out/bench"), "--out", help="report folder"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
        duration_s: float = typer.Option(None, "--duration-s", min=0.1, help="serve-cpu and --endpoint: seconds "
                                                                           "per load level"),
        slo_e2e_ms: float = typer.Option(None, "--slo-e2e-ms", min=0, help="serve-cpu: goodput SLO, end-to-end "
                                                                           "latency (default per endpoint)"),
        slo_ttft_ms: float = typer.Option(None, "--slo-ttft-ms", min=0, help="serve-cpu: goodput SLO, time to "
                                                                             "first token (generation)"),
        endpoint: str = typer.Option(None, "--endpoint", help="measure the tariff of this OpenAI-compatible "
                                                              "endpoint (e.g. http://127.0.0.1:8000/v1) serving "
                                                              "--model, priced at --hardware or --usd-per-hour"),
        task: str = typer.Option(None, "--task", help="--endpoint: embedding or causal-lm (default: the "
                                                      "endpoint's model card)"),
        concurrency: str = typer.Option(None, "--concurrency", help="--endpoint: closed-loop client counts "
                                                                    "(default 1,4,16,64)"),
        texts: Path = typer.Option(None, "--texts", help="--endpoint: send these texts (one per line) instead "
                                                         "of generated prompts"),
        key_env: str = typer.Option(None, "--key-env", help="--endpoint: the environment variable holding the "
                                                            "endpoint's API key"),
        tariff_out: Path = typer.Option(None, "--tariff-out", help="--endpoint: the tariff file to write "
                                                                   "(default OUT/tariff-<model>.yaml)"),
        keep_client_cpu: bool = typer.Option(None, "--keep-client-cpu/--deduct-client-cpu", help="--endpoint: "
                                             "price the whole hour, or the hour less the load generator's CPU "
                                             "share (default: deducted when the endpoint is on this machine)"),
        compare_tariffs: list[str] = typer.Option(None, "--compare-tariffs", help="tariff files (comma-separated "
                                                  "or repeated) to set side by side, with --endpoint's or alone"),
    ):
        """Measure variants against FP32 (each in a fresh process): latency, throughput, memory, cost, roofline.

        With --endpoint: a measured tariff ($ per 1K input and output tokens) of any OpenAI-compatible endpoint."""
        compare = [f for v in compare_tariffs or [] for f in _csv(v) or []]
        endpoint_only = {"--task": task, "--concurrency": concurrency, "--texts": texts, "--key-env": key_env,
                         "--tariff-out": tariff_out, "--keep-client-cpu/--deduct-client-cpu": keep_client_cpu}
        if endpoint is not None or compare:
            offline_only = {"--variants": variants, "--suite": suite, "--batch-sizes": batch_sizes,
                            "--seq-lens": seq_lens, "--profiles": profiles, "--project-to": project_to,
                            "--include-projected/--measured-only": include_projected,
                            "--utilization": utilization, "--max-p95-ms": max_p95_ms, "--min-cosine": min_cosine,
                            "--max-sts-drop": max_sts_drop, "--max-ppl-increase-pct": max_ppl_increase_pct,
                            "--sts": sts, "--threads": threads, "--device": device, "--rounds": rounds,
                            "--min-time-s": min_time_s, "--slo-e2e-ms": slo_e2e_ms, "--slo-ttft-ms": slo_ttft_ms}
            _endpoint_bench(endpoint, model, task, hardware, usd_per_hour, concurrency, duration_s, prompt_tokens,
                            gen_tokens, texts, key_env, tariff_out, compare, out_dir, as_json,
                            [k for k, v in offline_only.items() if v is not None], keep_client_cpu)
            return
        stray = [k for k, v in endpoint_only.items() if v is not None]
        if stray:
            raise LeaninferError(f"{', '.join(stray)} apply only with --endpoint URL")
        settings = get_suite(suite) if suite else {}
        given = {"model": model, "variants": _csv(variants), "batch_sizes": batch_sizes, "seq_lens": seq_lens,
                 "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "hardware": hardware,
                 "usd_per_hour": usd_per_hour, "profiles_yaml": str(profiles) if profiles else None,
                 "project_to": _csv(project_to), "include_projected": include_projected,
                 "utilization": utilization, "max_p95_ms": max_p95_ms,
                 "min_cosine": min_cosine, "max_sts_drop": max_sts_drop, "max_ppl_increase_pct": max_ppl_increase_pct,
                 "sts": str(sts) if sts else None, "threads": threads, "device": device, "rounds": rounds,
                 "min_time_s": min_time_s}
        if "serve_load" in settings:  # cost under load: served variants driven by the load generator
            others = [f"--{k.replace('_', '-')}" for k, v in given.items()
                      if v is not None and k not in ("hardware", "usd_per_hour")]
            _serve_load(serve_load_config(suite, settings, others, hardware=hardware, usd_per_hour=usd_per_hour,
                                          duration_s=duration_s, slo_e2e_ms=slo_e2e_ms, slo_ttft_ms=slo_ttft_ms),
                        out_dir, as_json)
            return
        settings.update({k: v for k, v in given.items() if v is not None})
        if sts is not None and not sts.is_file():
            raise LeaninferError(f"STS file {str(sts)!r} does not exist")
        cfg = BenchConfig(suite=suite, **settings)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            bar = progress.add_task("starting", total=None)

            def on_event(label, done, total):
                progress.update(bar, description=label, completed=done, total=total)

            report = run_bench(cfg, out_dir, on_event=on_event, argv=["leaninfer", *sys.argv[1:]],
                               on_stage=lambda line: progress.console.print(line, markup=False, highlight=False,
                                                                         soft_wrap=True))
        if as_json:
            print(json.dumps(report, default=str))
            return
        out.print((out_dir / "report.md").read_text(), markup=False, highlight=False)
        console.print(f"[green]report[/] {out_dir.resolve() / 'report.md'} (raw samples in report.json)")

    def _endpoint_bench(endpoint, model, task, hardware, usd_per_hour, concurrency, duration_s, prompt_tokens,
                        gen_tokens, texts, key_env, tariff_out, compare, out_dir, as_json, others,
                        keep_client_cpu=None) -> None:
        """``bench --endpoint`` (a measured tariff), or ``bench --compare-tariffs`` alone (the side-by-side table)."""
        if others:
            raise LeaninferError(f"{', '.join(others)} don't apply to --endpoint or --compare-tariffs (valid with "
                                 "--endpoint: --model, --hardware, --usd-per-hour, --task, --concurrency, "
                                 "--duration-s, --prompt-tokens, --gen-tokens, --texts, --key-env, --tariff-out, "
                                 "--compare-tariffs, --out, --json)")
        if endpoint is None:  # the comparison alone, priced for --prompt-tokens/--gen-tokens when given
            stray = [f for f, v in {"--task": task, "--concurrency": concurrency, "--texts": texts,
                                    "--key-env": key_env, "--tariff-out": tariff_out, "--model": model,
                                    "--hardware": hardware, "--usd-per-hour": usd_per_hour,
                                    "--duration-s": duration_s,
                                    "--keep-client-cpu/--deduct-client-cpu": keep_client_cpu}.items() if v is not None]
            if stray:
                raise LeaninferError(f"{', '.join(stray)} apply only with --endpoint URL (--compare-tariffs alone "
                                     "takes --prompt-tokens and --gen-tokens: a traffic shape to price)")
            rows = compare_rows(load_tariffs(compare), prompt_tokens, gen_tokens or 0.0)
            if as_json:
                print(json.dumps(rows, default=str))
                return
            out.print("\n".join(compare_markdown(rows, prompt_tokens, gen_tokens or 0.0)), markup=False,
                      highlight=False)
            return
        if model is None:
            raise LeaninferError("--endpoint needs --model NAME: the endpoint's model id (its /v1/models lists them)")
        if texts is not None and not texts.is_file():
            raise LeaninferError(f"--texts {str(texts)!r} is not a file (one text per line)")
        try:
            levels = [int(c) for c in _csv(concurrency)] if concurrency is not None else None
        except ValueError:
            raise LeaninferError(f"--concurrency takes integers, e.g. 1,4,16,64; got {concurrency!r}") from None
        given = {"endpoint": endpoint, "model": model, "task": task, "hardware": hardware,
                 "usd_per_hour": usd_per_hour, "concurrency": levels, "duration_s": duration_s,
                 "prompt_tokens": prompt_tokens, "max_tokens": gen_tokens,
                 "texts": read_texts(texts) if texts is not None else None,
                 "deduct_client_cpu": None if keep_client_cpu is None else not keep_client_cpu}
        cfg = EndpointBenchConfig(**{k: v for k, v in given.items() if v is not None})
        if cfg.texts == []:
            raise LeaninferError(f"--texts {str(texts)!r} has no non-empty line")
        with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            bar = progress.add_task("starting", total=None)
            doc = measure_endpoint(cfg, out_dir, key_env=key_env, tariff_out=tariff_out, compare=compare,
                                   argv=["leaninfer", *sys.argv[1:]],
                                   on_event=lambda msg: progress.update(bar, description=msg))
        if as_json:
            print(json.dumps(doc, default=str))
            return
        out.print((out_dir / "report.md").read_text(), markup=False, highlight=False)
        console.print(f"[green]tariff[/] {doc['meta']['tariff_file']}  [green]report[/] "
                      f"{out_dir.resolve() / 'report.md'}")

    def _serve_load(cfg, out_dir: Path, as_json: bool) -> None:
        with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            bar = progress.add_task("starting", total=None)
            report = run_serve_load(cfg, out_dir, on_event=lambda msg: progress.update(bar, description=msg),
                                    argv=["leaninfer", *sys.argv[1:]])
        if as_json:
            print(json.dumps(report, default=str))
            return
        out.print((out_dir / "report.md").read_text(), markup=False, highlight=False)
        console.print(f"[green]report[/] {out_dir.resolve() / 'report.md'} (raw samples in report.json)")

    @app.command("curves")
    @user_errors
    def curves_cmd(
        report_dir: Path = typer.Argument(..., help="a bench --out folder"),
        hardware: str = _flag("hardware"),
        usd_per_hour: float = _flag("usd_per_hour", min=0),
        project_to: str = _flag("project_to"),
        profiles: Path = _flag("profiles_yaml", "--profiles"),
        utilization: float = _flag("utilization"),
        max_p95_ms: float = _flag("max_p95_ms"),
        include_projected: bool = typer.Option(None, "--include-projected/--measured-only",
                                               help=BenchConfig.model_fields["include_projected"].description),
    ):
        """Redraw the cost curves (and projections, advice) of a bench report with other prices or hardware.

        The measured machine is the one the report recorded, not the one running this command."""
        report = recompute(report_dir, hardware=hardware, usd_per_hour=usd_per_hour, project_to=_csv(project_to),
                           profiles_yaml=str(profiles) if profiles else None, utilization=utilization,
                           max_p95_ms=max_p95_ms, include_projected=include_projected)
        for p in report.get("plots", []):
            out.print(p)
        out.print(report["advice"]["text"])

    @app.command("forecast")
    @user_errors
    def forecast_cmd(
        report_dir: Path = typer.Argument(..., help="a bench --out folder"),
        requests_per_day: float = typer.Option(..., "--requests-per-day", min=0),
        input_tokens: float = typer.Option(..., "--input-tokens", min=0, help="input tokens per request"),
        output_tokens: float = typer.Option(0, "--output-tokens", min=0, help="output tokens per request"),
        max_utilization: float = typer.Option(DEFAULT_MAX_UTILIZATION, "--max-utilization",
                                              help="keep each machine at most this busy"),
        max_p95_ms: float = typer.Option(None, "--max-p95-ms"),
        include_projected: bool = typer.Option(False, "--include-projected",
                                               help="price the report's projected rows too (labelled)"),
        as_json: bool = typer.Option(False, "--json"),
    ):
        """Monthly cost of a traffic profile for every (variant, hardware) option of a bench report."""
        rows = forecast(load_report(report_dir), requests_per_day, input_tokens, output_tokens,
                        max_utilization=max_utilization, max_p95_ms=max_p95_ms, include_projected=include_projected)
        if as_json:
            print(json.dumps(rows))
            return
        t = Table(title=f"{requests_per_day:,.0f} requests/day, {input_tokens:g} in + {output_tokens:g} out tokens each")
        for col in ("variant", "hardware", "label", "batch", "machines", "busy %", "$/month", "$/month if busy-only"):
            t.add_column(col, justify="left" if col in ("variant", "hardware", "label") else "right")
        for r in rows:
            t.add_row(r["variant"], r["hardware"], r["label"], str(r["batch_size"]), str(r["instances"]),
                      f"{100 * r['utilization']:.1f}", f"{r['usd_per_month']:,.2f}", f"{r['usd_per_month_busy_only']:,.2f}")
        out.print(t)

    @app.command("hardware")
    @user_errors
    def hardware_cmd(profiles: Path = typer.Option(None, "--profiles", help="YAML file with more profiles"),
                     as_json: bool = typer.Option(False, "--json", help="print one JSON object: profiles and local")):
        """List the hardware profiles (prices with date and source) and this machine."""
        if as_json:
            print(json.dumps(hardware_listing(profiles), indent=2))
            return
        # Names are the values of --hardware: listing_table keeps them whole and wraps the description.
        t = listing_table("hardware profiles (on-demand prices; check before you buy)",
                          [("name", NAME), ("kind", DATA), ("$/hour", DATA), ("priced", DATA), ("GB", DATA),
                           ("GB/s", DATA), ("description; peak TFLOP/s fp32/fp16/int8", TEXT)])
        for p in load_profiles(profiles).values():
            pk = p.peak_tflops_per_s
            peaks = "/".join(f"{pk[k]:.3g}" if k in pk else "–" for k in ("fp32", "fp16", "int8"))
            t.add_row(p.name, p.kind, f"{p.usd_per_hour:g}" if p.priced else "–", p.price_date or "–",
                      f"{p.memory_gb:g}" if p.memory_gb else "–",
                      f"{p.memory_bandwidth_gb_per_s:g}" if p.memory_bandwidth_gb_per_s else "–",
                      f"{p.description}; [dim]{peaks}[/]")
        print_listing(out, t)
        hw = detect_local()
        out.print(f"local: {hw.cpu_name}, {hw.physical_cores} cores, INT8 path {hw.int8_isa}, "
                  f"{hw.ram_bytes / 1e9:.1f} GB RAM" + (f", GPU {hw.gpu_name}" if hw.gpu_name else "")
                  + " — unpriced: use --usd-per-hour or --hardware PROFILE with bench")
