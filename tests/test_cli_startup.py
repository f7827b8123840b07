"""The ledger and key commands start without the models, the server or the benchmarks (leaninfer/entry.py):
what they import is checked, not timed; and the executable's routing keeps every command reachable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from leaninfer.entry import LIGHT, command

HEAVY = ("torch", "transformers", "numpy", "fastapi", "aiohttp", "uvicorn", "matplotlib", "ray", "onnxruntime", "httpx",
         "leaninfer.models", "leaninfer.serving", "leaninfer.benchmarks", "leaninfer.pipeline")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(LIGHT))
def test_a_light_command_imports_no_model_server_or_benchmark(name):
    probe = ("import sys; sys.argv = ['leaninfer', " + repr(name) + ", '--help']\n"
             "from leaninfer.entry import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in sys.modules))")
    res = _run("-c", probe)
    assert res.returncode == 0, res.stderr
    loaded = eval(res.stdout.rsplit("LOADED ", 1)[1])
    assert [m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY)] == []
    assert f"leaninfer {name}" in res.stdout  # its own help, as the whole app prints it


def test_the_executable_reaches_every_command():
    top = _run("-m", "leaninfer", "--help")
    assert top.returncode == 0, top.stderr
    for name in ("serve", "bench", "optimize", "eval", "demo", "usage", "keys", "budgets"):
        assert name in top.stdout
    # an unknown option of a light command is the same usage error as in the whole app
    bad = _run("-m", "leaninfer", "-v", "usage", "--colour")
    assert bad.returncode == 2 and "No such option" in bad.stderr


def test_the_sub_command_is_the_first_word_not_an_option():
    assert command(["-v", "usage", "--by", "team"]) == "usage"
    assert command(["--verbose", "keys", "list"]) == "keys"
    assert command(["--help"]) is None and command([]) is None


def test_the_python_api_still_loads_on_first_use():
    res = _run("-c", "import sys, leaninfer; assert 'leaninfer.models' not in sys.modules; "
                     "assert callable(leaninfer.load) and callable(leaninfer.optimize) and callable(leaninfer.evaluate);"
                     " assert 'minilm' not in leaninfer.RANDOM_PRESETS and leaninfer.Model.__name__ == 'Model'; "
                     "import leaninfer.pipeline; assert callable(leaninfer.evaluate); "  # its submodule doesn't shadow it
                     "from leaninfer import load; print('ok')")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
