#!/usr/bin/env bash
# Prefill/decode disaggregation (issue 17, item 4): a long-prompt workload (8,000 words in, about as many tokens;
# 256 tokens out, every one generated) against 4 mixed simulator replicas and against 2 prefill + 2 decode ones,
# both models of one `modelyard up` (one gateway), driven by one `modelyard bench` per rate with both targets
# interleaved (the same prompts, the same seeded Poisson arrivals). The simulators play Llama-3.1-8B on an H100
# (profile llama-3.1-8b-h100: an 8k-token prefill is ~270 ms, a decode step ~6.5 ms, a KV block's transfer 40 us)
# without their 30 s startup. Each rate has its own seed, so no prompt is in a prefix cache from an earlier level.
# Bounded: RATES x SECONDS_PER_LEVEL seconds of arrivals plus the drains (about 2 minutes with the defaults).
# usage: benchmarks/disaggregation.sh [RATES] [OUTPUT_DIR]   env: SECONDS_PER_LEVEL (default 20), PY
set -euo pipefail
cd "$(dirname "$0")/.."
RATES="${1:-2,4,6}"; RESULTS="${2:-benchmarks/results/disaggregation-$(date +%Y%m%d-%H%M%S)}"
SECONDS_PER_LEVEL="${SECONDS_PER_LEVEL:-20}"
PY="${PY:-.venv/bin/python}"
WORK=$(mktemp -d)
. benchmarks/lib.sh
export MODELYARD_API_KEY=bench-key YARD_KEY=bench-key MODELYARD_ADMIN_KEY=bench-admin-key
mkdir -p "$RESULTS"
P_GW=$(port)
PARAMS="{startup_s: 0, max_model_len: 16384}"
cat > "$RESULTS/yard.yaml" <<YAML
version: 1
state_dir: $WORK/state
gateway: {host: 127.0.0.1, port: $P_GW, workers: 1}
models:
  - {name: mixed, engine: simulator, profile: llama-3.1-8b-h100, params: $PARAMS, watchdog_s: null, replicas: 4}
  - {name: split, engine: simulator, profile: llama-3.1-8b-h100, params: $PARAMS, watchdog_s: null,
     roles: {prefill: 2, decode: 2}}
YAML
$PY -m modelyard up -f "$RESULTS/yard.yaml" > "$RESULTS/up.log" 2>&1 &
track $!
for _ in $(seq 1 300); do
  ready=$(curl -sf "http://127.0.0.1:$P_GW/health" | $PY -c \
    "import json,sys; print(sum(m['ready'] for m in json.load(sys.stdin)['models'].values()))" 2>/dev/null || echo 0)
  [ "$ready" = 8 ] && break; sleep 0.5
done
[ "$ready" = 8 ] || { echo "the replicas did not start (see $RESULTS/up.log)"; exit 1; }
IFS=, read -r -a LEVELS <<< "$RATES"
for rate in "${LEVELS[@]}"; do
  n=$($PY -c "print(max(4, round($rate * $SECONDS_PER_LEVEL)))")
  $PY -m modelyard bench --target "mixed=http://127.0.0.1:$P_GW/v1@YARD_KEY" \
      --target "split=http://127.0.0.1:$P_GW/v1@YARD_KEY" --model mixed=mixed --model split=split \
      --dataset random --input-len 8000 --output-len 256 --range-ratio 0 --ignore-eos --warmup 0 \
      --rate "$rate" --num-requests "$n" --seed "$((1000 + ${rate%.*}))" --output-dir "$RESULTS/rate-$rate" \
      > "$RESULTS/rate-$rate.log" 2>&1
  tail -n 25 "$RESULTS/rate-$rate.log"
done
curl -sf -H "Authorization: Bearer $MODELYARD_ADMIN_KEY" "http://127.0.0.1:$P_GW/metrics" 2>/dev/null \
  | grep -E '^modelyard_prefill_legs_total' > "$RESULTS/prefill_legs.txt" || true
$PY benchmarks/disaggregation_report.py "$RESULTS" --command "benchmarks/disaggregation.sh $RATES"
