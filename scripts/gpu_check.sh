#!/usr/bin/env bash
# One run on a GPU machine: the CUDA tests, then short GPU benchmarks; results land in $OUT (or ./gpu-out).
# The GPU machine has torch/transformers but not every leaninfer dependency and no network: the wheels it
# lacks travel in .whl/, and the random presets' tokenizer in .gpu-site/, both made by scripts/gpu_carry.sh
# (docs/gpu.md "Running it"). Each stage is time-boxed so one slow stage can't eat the others; the boxes add up to
# 8 minutes, so the whole run fits one device call (10 minutes at most) with the pip install and a margin.
# Smoke test without a GPU: DEVICE=cpu MODELS=random:tiny-llama SERVE_MODEL=random:tiny-llama (the CUDA tests skip,
# the embeddings bench fails naming the device, the other stages run on the CPU).
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false COLUMNS=200  # rich tables unclipped in the log
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}
fi
# At most 8 files come back from a device call: the logs of every stage go to one file, beside the JSON results.
LOG="$OUT/gpu_check.log"; : > "$LOG"
stage() { echo "== $1 ($(date -u +%T))" | tee -a "$LOG"; }
stage "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } 2>&1 | tee -a "$LOG"
stage "CUDA tests"  # all of tests/test_gpu.py (its 200-joins test has no "cuda" in its name), the CUDA cases of the others
timeout 110 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py tests/steps/test_steps.py tests/models \
  -k "cuda or CUDA or test_gpu" 2>&1 | tail -40 | tee -a "$LOG"
stage "embeddings bench, FP32/FP16/BF16"
timeout 80 python3 -m leaninfer.cli bench --model random:bert-base --variants fp32,fp16,bf16 --device cuda \
  --batch-sizes 32,128 --seq-lens 128 --hardware h100-sxm --out /tmp/bench-embed 2>&1 | tail -30 | tee -a "$LOG"
stage "decode per step"  # leaninfer's modes beside transformers static+compile, % of the read-only bound
timeout 180 python3 scripts/gpu_decode.py "$OUT" 2>&1 | tail -30 | tee -a "$LOG"
stage "serving under load"  # 1, 16, 64 streams of 128 + 128 tokens; the decode graphs captured before and after
timeout 110 bash scripts/gpu_serve_load.sh "$OUT" ${SERVE_MODEL:-} 2>&1 | tail -25 | tee -a "$LOG"
stage "done"
[ -d /tmp/bench-embed ] && tar czf "$OUT/bench_embed.tgz" -C /tmp bench-embed
ls -la "$OUT"
