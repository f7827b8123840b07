"""lm-evaluation-harness, unmodified, as a client of ``leaninfer serve`` (issue 24): scripts/lm_eval_check.py
runs its ``local-completions`` model against the server and its ``hf`` model on the same saved weights, and
exits 0 only when every choice's log-likelihood agrees to 1e-3, the accuracies are equal and a
``generate_until`` task ran through the server. Skipped where lm-eval isn't installed (it is no dependency)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'lm-eval[api]', torch pinned)")
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # two lm-eval runs and a server process

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lm_eval_check.py"


def test_lm_eval_local_completions_matches_its_hf_backend(tmp_path):
    # random:tiny-gpt2 keeps it short; the script's default (random:gpt2) is the documented check
    r = subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(tmp_path), "--model", "random:tiny-gpt2"],
                       capture_output=True, text=True, timeout=580)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "lm_eval_check.json").read_text())
    assert report["max_abs_delta_loglikelihood"] <= 1e-3
    assert report["acc_hf"] == report["acc_server"]
    assert report["choices"] == 48 and report["generate_until"]["items"] == 4
