"""The ``leaninfer`` command: one sub-command per job. Flags are the config field names. (The ``leaninfer``
executable starts in :mod:`.entry`, which runs the ledger and key commands without importing this module.)

Errors a user can cause print one line naming the bad value and what is valid, and exit non-zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from .benchmarks import cli as bench_cli
from .benchmarks.load import cli as load_cli
from .cli_base import console, new_app, out, run, user_errors
from .data import read_texts
from .demo import run_demo
from .endpoint import EndpointEmbedder, api_key_from_env, open_endpoint
from .errors import LeaninferError
from .evaluate import evaluate
from .finops import budgets_cli, keys_cli
from .finops import cli as finops_cli
from .finops.price_list import PriceList, load_price_list, save_price_list
from .listing import DATA, NAME, TEXT, listing_table, print_listing
from .models import RANDOM_PRESETS, load
from .pipeline import Floors, Recipe, optimize
from .serving import cli as serve_cli
from .steps import STEPS

app = new_app()


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@app.command("models")
@user_errors
def models_cmd(as_json: bool = typer.Option(False, "--json", help="print one JSON object: models and steps")):
    """List the model references and optimization steps leaninfer knows."""
    refs = [("minilm", "embedding", "all-MiniLM-L6-v2, bundled, real weights, offline")]
    refs += [(f"random:{p.name}", p.task, f"{p.description} (weights: random)") for p in RANDOM_PRESETS.values()]
    refs += [("DIR", "as saved", "a leaninfer artifact (has leaninfer.json) or a transformers model directory"),
             ("owner/name", "inferred", "a Hugging Face id (needs network: set HF_HUB_OFFLINE=0)")]
    steps = sorted(STEPS.items())
    if as_json:
        print(json.dumps({
            "models": [{"reference": r, "task": t, "description": d} for r, t, d in refs],
            "steps": [{"step": name, "accepts": list(cls.accepts), "tasks": list(cls.tasks), "summary": cls.summary,
                       "parameters": {k: {"default": f.default, "description": f.description}
                                      for k, f in cls.model_fields.items()}}
                      for name, cls in steps]}, indent=2, default=str))
        return
    t = listing_table("model references", [("reference", NAME), ("task", DATA), ("what", TEXT)])
    for row in refs:
        t.add_row(*row)
    print_listing(out, t)
    s = listing_table("optimization steps (parameters: step:key=value,key=value; see --json)",
                      [("step", NAME), ("starts from", TEXT), ("what", TEXT)])
    for name, cls in steps:
        s.add_row(name, ", ".join(cls.accepts), cls.summary)
    print_listing(out, s)


@app.command("optimize")
@user_errors
def optimize_cmd(
    model: str = typer.Option(None, "--model", help="model reference (default: the recipe's model, else minilm)"),
    steps: str = typer.Option(None, "--steps", help="comma-separated steps, e.g. onnx,ort-int8"),
    recipe: Path = typer.Option(None, "--recipe", help="YAML recipe: steps with parameters, optional floors"),
    out_dir: Path = typer.Option(..., "--out", help="artifact directory to write (atomically)"),
    task: str = typer.Option(None, "--task", help="embedding or causal-lm (default: inferred)"),
    device: str = typer.Option("cpu", "--device"),
    sts: Path = typer.Option(None, "--sts", help="STS CSV (sentence1,sentence2,score) for the quality check"),
    calibration: Path = typer.Option(None, "--calibration", help="text file, one calibration text per line"),
    min_cosine: float = typer.Option(None, "--min-cosine", help="floor: mean cosine to the source"),
    max_sts_drop: float = typer.Option(None, "--max-sts-drop", help="floor: Spearman points lost on --sts"),
    max_ppl_increase_pct: float = typer.Option(None, "--max-ppl-increase-pct", help="floor: perplexity increase"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
):
    """Apply optimization steps to a model, check quality against it, save a reloadable artifact."""
    from rich.progress import Progress

    if (steps is None) == (recipe is None):
        raise LeaninferError("give exactly one of --steps S1,S2 or --recipe FILE.yaml")
    if recipe is not None:
        r = Recipe.from_yaml(recipe)
        step_list, floors, model = r.steps, r.floors, model or r.model
    else:
        step_list, floors = steps, Floors()
    cli_floors = {k: v for k, v in {"min_cosine": min_cosine, "max_sts_drop": max_sts_drop,
                                     "max_ppl_increase_pct": max_ppl_increase_pct}.items() if v is not None}
    if cli_floors:
        try:
            floors = Floors(**(floors.model_dump(exclude_none=True) | cli_floors))
        except Exception as e:
            raise LeaninferError(f"invalid floor: {e}") from None
    calib = read_texts(calibration) if calibration else None
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("loading", total=None)

        def on_step(i, n, name):
            progress.update(bar, total=n + 1, completed=i, description=f"step {i + 1}/{n}: {name}")

        result = optimize(model or "minilm", step_list, out_dir, floors=floors, sts=sts, calibration_texts=calib,
                          overwrite=overwrite, task=task, device=device, on_step=on_step)
    if as_json:
        print(json.dumps(result.manifest, indent=2))
        return
    m = result.manifest
    console.print(f"[green]saved[/] {result.path}  ({m['format']}, {m['state']}, {m['size_bytes'] / 1e6:.1f} MB, "
                  f"source {m['source']['weight_bytes'] / 1e6:.1f} MB)")
    for k, v in (m["quality"] or {}).items():
        if k not in ("task", "weights"):
            console.print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    for note in m["notes"]:
        if "parity" not in note and "fused" not in note:
            console.print(f"  [yellow]note:[/] {note}")


# The figures of an endpoint's evaluation that its tariff file keeps (``quality``: what --route floors read).
ENDPOINT_QUALITY = ("sts_spearman", "sts_drop_pts", "mean_cosine_to_reference")


def _eval_endpoint(endpoint: str, model: str | None, reference: str | None, sts: Path | None, text: Path | None,
                   task: str | None, device: str, key_env: str | None, tariff: Path | None) -> dict:
    """``eval --endpoint``: the endpoint's embeddings scored by ``evaluate`` as a local model's are; the figures
    written into ``tariff``'s ``quality`` (whole file or nothing). Every input is checked before the first
    request, the tariff file before the evaluation."""
    if model is None:
        raise LeaninferError("--endpoint needs --model NAME: the endpoint's model id (its /v1/models lists them)")
    if sts is None and reference is None:
        raise LeaninferError("--endpoint needs --sts CSV (STS Spearman) and/or --reference MODEL (cosine to it)")
    prices = load_price_list(tariff) if tariff is not None else None
    if prices is not None and (prices.model != model or prices.task not in (None, "embedding")):
        raise LeaninferError(f"--tariff {str(tariff)!r} prices {prices.model!r} ({prices.task}), not the "
                             f"embedding model {model!r}")
    ep = open_endpoint(endpoint, model, task=task, api_key=api_key_from_env(key_env))
    target = EndpointEmbedder(ep)
    ref = load(reference, task="embedding", device=device) if reference else None
    if ref is not None:
        dims = target.embed(["dimension check"]).shape[-1], ref.embed(["dimension check"]).shape[-1]
        if dims[0] != dims[1]:
            raise LeaninferError(f"--reference {reference!r} embeds in {dims[1]} dimensions, {model!r} at "
                                 f"{ep.base_url} in {dims[0]}: no cosine between them (STS alone: drop --reference)")
    result = {"target": f"{model} @ {ep.base_url}", "reference": reference,
              **evaluate(target, ref, sts=sts, texts=read_texts(text) if text is not None else None)}
    if prices is not None:
        measured = {k: float(result[k]) for k in ENDPOINT_QUALITY if isinstance(result.get(k), (int, float))}
        save_price_list(PriceList.model_validate({**prices.model_dump(), "quality": {**(prices.quality or {}),
                                                                                      **measured}}), tariff)
        result["tariff"] = str(tariff)
    return result


@app.command("eval")
@user_errors
def eval_cmd(
    target: str = typer.Argument(None, help="model reference or artifact directory (or --endpoint URL)"),
    reference: str = typer.Option(None, "--reference", help="compare against this model (e.g. the FP32 source)"),
    sts: Path = typer.Option(None, "--sts", help="STS CSV: sentence1,sentence2,score (no header)"),
    text: Path = typer.Option(None, "--text", help="text file: evaluation texts (one per line) or a document"),
    task: str = typer.Option(None, "--task"),
    device: str = typer.Option("cpu", "--device"),
    endpoint: str = typer.Option(None, "--endpoint", help="evaluate the embeddings of an OpenAI-compatible "
                                                          "endpoint instead of a local model (with --model)"),
    model: str = typer.Option(None, "--model", help="--endpoint: the endpoint's model id"),
    key_env: str = typer.Option(None, "--key-env", help="--endpoint: the environment variable holding its API key"),
    tariff: Path = typer.Option(None, "--tariff", help="--endpoint: write the figures into this tariff file's "
                                                       "quality (sts_spearman, sts_drop_pts vs --reference, "
                                                       "mean_cosine_to_reference)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Quality of a model: cosine to a reference and STS Spearman (embeddings); perplexity, KL, top-1 (LMs)."""
    if (target is None) == (endpoint is None):
        raise LeaninferError("give a model reference (leaninfer eval MODEL) or an endpoint (--endpoint URL "
                             "--model NAME), not both")
    if endpoint is None and [f for f, v in {"--model": model, "--key-env": key_env, "--tariff": tariff}.items()
                             if v is not None]:
        raise LeaninferError("--model, --key-env and --tariff apply only with --endpoint URL")
    if sts is not None and not sts.is_file():
        raise LeaninferError(f"STS file {str(sts)!r} does not exist")
    if text is not None and not text.is_file():
        raise LeaninferError(f"text file {str(text)!r} does not exist")
    if endpoint is not None:
        result = _eval_endpoint(endpoint, model, reference, sts, text, task, device, key_env, tariff)
        target = result["target"]
    else:
        tgt = load(target, task=task, device=device)
        ref = load(reference, task=tgt.task, device=device) if reference else None
        kwargs = {"sts": sts}
        if text is not None:
            kwargs |= {"texts": read_texts(text)} if tgt.task == "embedding" else {"text": text.read_text()}
        result = {"target": target, "reference": reference, **evaluate(tgt, ref, **kwargs)}
    if as_json:
        print(json.dumps(result))
        return
    t = Table(title=f"quality of {target}" + (f" vs {reference}" if reference else ""))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in result.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(t)


@app.command("demo")
@user_errors
def demo_cmd(
    out_dir: Path = typer.Option(Path("leaninfer-out/demo"), "--out", help="where the variants are saved"),
    sts: Path = typer.Option(None, "--sts", help="optional STS CSV for Spearman beside cosine"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    repeats: int = typer.Option(5, "--repeats", min=1),
):
    """The main job on the bundled minilm: make variants, check quality, measure speed, print a table."""
    run_demo(out_dir, sts=sts, batch_size=batch_size, repeats=repeats, console=console, out=out)


# The benchmark and serving jobs keep their commands with their packages.
bench_cli.register(app, user_errors)
serve_cli.register(app, user_errors)
load_cli.register(app, user_errors)
keys_cli.register(app, user_errors)
budgets_cli.register(app, user_errors)
finops_cli.register(app, user_errors)


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()
