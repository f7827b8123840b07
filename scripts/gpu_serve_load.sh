#!/usr/bin/env bash
# `leaninfer serve --device cuda` under load (a stage of scripts/gpu_check.sh): random:llama-3.2-1b driven by the
# project's load generator at 1, 16 and 64 concurrent streams of 128 prompt + 128 generated tokens. Records
# output tokens/s, TTFT and ITL percentiles per level ($OUT/gpu_serve_load.json) and, on stdout, the decode graphs the
# engine captured at start-up and after the load (a change means serving captured: it must not).
#   bash scripts/gpu_serve_load.sh OUT_DIR [MODEL]      (DEVICE=cpu ... with a tiny model: a smoke test of the script)
set -uo pipefail
OUT=${1:-gpu-out}; MODEL=${2:-random:llama-3.2-1b}; DEVICE=${DEVICE:-cuda}; PORT=8011; mkdir -p "$OUT"
python3 -m leaninfer.cli serve "$MODEL" --name lm --device "$DEVICE" --port $PORT --max-batch-size 64 \
  --max-batch-tokens 65536 > /tmp/gpu_serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf localhost:$PORT/health >/dev/null && break; sleep 1; done
captures() { curl -s localhost:$PORT/metrics | grep '^leaninfer_decode_graph_captures' || echo "no capture gauge"; }
echo "after start-up: $(captures)"
grep -i "warm-up\|captured" /tmp/gpu_serve.log | tail -3
python3 -m leaninfer.cli load --model lm --base-url http://127.0.0.1:$PORT/v1 --endpoint completions \
  --concurrency 1,16,64 --duration-s 12 --prompt-tokens 128 --max-tokens 128 --ignore-eos \
  --json "$OUT/gpu_serve_load.json" 2>&1 | tail -12
echo "after the load: $(captures)"
grep -c " 500 \|Traceback" /tmp/gpu_serve.log | sed 's/^/server errors and tracebacks in its log: /'
