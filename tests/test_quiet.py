"""Quiet by default in the Python API (leaninfer.logs): no third-party warning or progress bar on stderr,
LEANINFER_LOG=debug brings them back, and a real error still prints its message."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# What the libraries print on the way (issue 13): torchao's optional kernels, torch's pytree deprecations, the
# export's tracer and opset warnings, ONNX Runtime's pre-processing advice, transformers' weight-loading bar,
# and NNCF's bar (driven directly: its quantization is slow for a test).
NOISE = ("Failed to load", "_pytree", "TracerWarning", "UserWarning", "DeprecationWarning", "FutureWarning",
         "pre-processing", "Loading weights", "it/s]", "nncf-bar-marker")
SCRIPT = """
import sys, leaninfer
leaninfer.optimize(leaninfer.load("minilm"), "onnx,ort-int8", sys.argv[1])
from nncf.common.logging.track_progress import track
list(track(range(3), description="nncf-bar-marker"))
"""


def python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("LEANINFER_LOG", "PYTHONWARNINGS")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                          env={**clean, "HF_HUB_OFFLINE": "1", **env})


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_api_is_quiet_by_default_and_debug_shows_the_libraries(tmp_path):
    quiet = python(SCRIPT, str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    heard = [m for m in NOISE if m in quiet.stderr + quiet.stdout]
    assert not heard, f"library noise {heard} in:\n{quiet.stderr}"
    assert (tmp_path / "quiet" / "leaninfer.json").is_file()

    loud = python(SCRIPT, str(tmp_path / "loud"), LEANINFER_LOG="debug")
    assert loud.returncode == 0, loud.stderr
    heard = [m for m in NOISE if m in loud.stderr + loud.stdout]
    # the switches are the libraries' own: with them off, their output is there again
    assert {"pre-processing", "Loading weights", "nncf-bar-marker"} <= set(heard), loud.stderr


def test_a_real_error_still_surfaces(tmp_path):
    p = python("import sys, leaninfer; leaninfer.optimize('random:tiny-bert', 'int7', sys.argv[1])",
               str(tmp_path / "x"))
    assert p.returncode != 0
    assert "unknown step 'int7'" in p.stderr and "valid steps" in p.stderr


def test_a_bad_log_level_is_named_with_the_valid_ones():
    p = python("import leaninfer", LEANINFER_LOG="loud")
    assert p.returncode == 0
    assert "LEANINFER_LOG='loud' is not a log level; valid: warning, info, debug" in p.stderr


def test_import_loads_no_backend_library():
    # quieting works through post-import hooks, so `import leaninfer` stays light
    p = python("import sys, leaninfer; print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'nncf') "
               "if m in sys.modules))")
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr
