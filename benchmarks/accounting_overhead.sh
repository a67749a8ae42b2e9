#!/usr/bin/env bash
# The gateway's added TTFT with keys + limits + usage on vs all off, in one `modelyard bench` run:
# one simulator (modelyard simulate) behind two gateways on 127.0.0.1:
#   off: a static key from $MODELYARD_API_KEY (no store lookup, no limits), usage not recorded
#   on : a store key with rpm/tpm/concurrency/budget limits (SQLite lookup per request), usage recorded
# plus the simulator direct as the baseline. Bounded in count and time.
# usage: benchmarks/accounting_overhead.sh [NUM_REQUESTS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100}"; C="${2:-1}"
PY=.venv/bin/python
WORK=$(mktemp -d); RESULTS="benchmarks/results/accounting_overhead-$(date +%Y%m%d-%H%M%S)"
. benchmarks/lib.sh
P_SIM=$(port); P_OFF=$(port); P_ON=$(port)

.venv/bin/modelyard simulate --host 127.0.0.1 --port "$P_SIM" --model sim --profile tiny-cpu \
    --param itl_base_s=0.02 --param prefill_overhead_s=0.02 > "$WORK/sim.log" 2>&1 &
track $!
wait_up "http://127.0.0.1:$P_SIM/health"
for mode in off on; do
  p=$P_OFF; [ $mode = on ] && p=$P_ON
  record=false; [ $mode = on ] && record=true
  cat > "$WORK/$mode.yaml" <<YAML
state_dir: $WORK/$mode
gateway: {host: 127.0.0.1, port: $p}
store: {record_usage: $record}
models:
  - {name: sim, engine: openai, urls: ["http://127.0.0.1:$P_SIM"], admission: {max_queue: 1000}}
YAML
done
MODELYARD_API_KEY=static-key .venv/bin/modelyard up -f "$WORK/off.yaml" > "$WORK/off.log" 2>&1 &
track $!
export ON_KEY
ON_KEY=$(.venv/bin/modelyard keys create --state-dir "$WORK/on" --name bench --models sim --rpm 100000 \
    --tpm 100000000 --max-concurrency 1000 --budget-tokens 1000000000 2>/dev/null)
MODELYARD_API_KEY=unused-static-key .venv/bin/modelyard up -f "$WORK/on.yaml" > "$WORK/on.log" 2>&1 &
track $!
wait_up "http://127.0.0.1:$P_OFF/health"; wait_up "http://127.0.0.1:$P_ON/health"
export STATIC_KEY=static-key
.venv/bin/modelyard bench --target "direct=http://127.0.0.1:$P_SIM/v1@STATIC_KEY" \
    --target "accounting-off=http://127.0.0.1:$P_OFF/v1@STATIC_KEY" --target "accounting-on=http://127.0.0.1:$P_ON/v1@ON_KEY" \
    --model sim --endpoint chat --dataset random --input-len 64 --output-len 32 \
    --concurrency "$C" --alternate --num-requests "$N" --warmup 4 --max-duration 300 --output-dir "$RESULTS"
echo "usage rows recorded by the 'on' gateway:"; sleep 2
.venv/bin/modelyard usage --state-dir "$WORK/on" --by key --since 1h
echo "results: $RESULTS"
