#!/usr/bin/env bash
# One run on a GPU machine: the CUDA tests, then short GPU benchmarks; results land in $OUT (or ./gpu-out).
# The GPU machine has torch/transformers but not every leaninfer dependency and no network: the wheels it
# lacks travel in .whl/, and the random presets' tokenizer in .gpu-site/, both made by scripts/gpu_carry.sh
# (docs/gpu.md "Running it"). Each stage is time-boxed so one slow stage can't eat the others.
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } | tee "$OUT/gpu.txt"
# all of tests/test_gpu.py (its 200-joins test has no "cuda" in its name), the CUDA cases of the others
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py tests/steps/test_steps.py tests/models \
  -k "cuda or CUDA or test_gpu" 2>&1 | tail -25 | tee "$OUT/pytest_cuda.log"
timeout 100 python3 -m leaninfer.cli bench --model random:bert-base --variants fp32,fp16,bf16 --device cuda \
  --batch-sizes 32,128 --seq-lens 128 --hardware h100-sxm --out /tmp/bench-embed 2>&1 | tail -30 | tee "$OUT/bench_embed.log"
# decode per step: leaninfer's modes beside transformers static+compile, % of the read-only bound
timeout 200 python3 scripts/gpu_decode.py "$OUT" 2>&1 | tail -20 | tee "$OUT/gpu_decode.log"
# serving under load: 1, 16, 64 streams of 128 + 128 tokens; the decode graphs captured before and after the load
timeout 150 bash scripts/gpu_serve_load.sh "$OUT" 2>&1 | tail -20 | tee "$OUT/gpu_serve_load.log"
for d in bench-embed; do
  for f in /tmp/$d/*.md /tmp/$d/*.json; do [ -f "$f" ] && cp "$f" "$OUT/${d}_$(basename "$f")"; done
done
ls -la "$OUT"
