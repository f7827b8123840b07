"""`leaninfer models` and `leaninfer hardware`: names whole at any width (they are what a user pastes into
--model, --steps, --hardware), descriptions wrapped instead, and --json holding every name."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from leaninfer.hardware import load_profiles
from leaninfer.listing import NAME, TEXT, listing_table, print_listing
from leaninfer.models import RANDOM_PRESETS
from leaninfer.steps import STEPS

MODEL_NAMES = ["minilm", *(f"random:{p}" for p in RANDOM_PRESETS)]


def run(*args, columns: int | None = None):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = str(columns)
    # stdout is a pipe here, as in `leaninfer hardware | cat`
    return subprocess.run([sys.executable, "-m", "leaninfer.cli", *args], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)


def words(text: str) -> set[str]:
    return {w for line in text.splitlines() for w in line.split()}


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 50, None])
def test_hardware_shows_every_profile_name_whole(columns):
    p = run("hardware", columns=columns)
    assert p.returncode == 0, p.stderr
    missing = [n for n in load_profiles() if n not in words(p.stdout)]
    assert not missing, f"cut or missing at {columns} columns: {missing}\n{p.stdout}"
    assert "…" not in p.stdout
    if columns:  # descriptions wrap: no line wider than the terminal where the names fit
        assert max(len(line) for line in p.stdout.splitlines()) <= max(columns, 80)


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 50])
def test_models_shows_every_reference_and_step_whole(columns):
    p = run("models", columns=columns)
    assert p.returncode == 0, p.stderr
    missing = [n for n in [*MODEL_NAMES, *STEPS] if n not in words(p.stdout)]
    assert not missing, f"cut or missing at {columns} columns: {missing}\n{p.stdout}"
    assert "…" not in p.stdout


@pytest.mark.slow
def test_json_listings_hold_every_name():
    p = run("hardware", "--json")
    assert p.returncode == 0, p.stderr
    h = json.loads(p.stdout)
    assert [x["name"] for x in h["profiles"]] == list(load_profiles())
    assert all("usd_per_hour" in x and "price_date" in x for x in h["profiles"]) and h["local"]["cpu_name"]
    p = run("models", "--json")
    assert p.returncode == 0, p.stderr
    m = json.loads(p.stdout)
    assert {x["reference"] for x in m["models"]} >= set(MODEL_NAMES)
    steps = {x["step"]: x for x in m["steps"]}
    assert set(steps) == set(STEPS)
    assert "ratio" in steps["prune-ffn"]["parameters"]  # the key=value a user can pass


def test_a_table_too_wide_for_the_console_is_printed_wider_not_cut():
    c = Console(width=30, record=True, file=open(os.devnull, "w"))
    t = listing_table("t", [("name", NAME), ("what", TEXT)])
    t.add_row("a-rather-long-profile-name-x", "a description that wraps onto several lines")
    print_listing(c, t)
    out = c.export_text()
    assert "a-rather-long-profile-name-x" in out and c.width == 30  # the console is left as it was
