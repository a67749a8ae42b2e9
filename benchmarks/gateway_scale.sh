#!/usr/bin/env bash
# How many concurrent streams one gateway process relays without becoming the bottleneck: two identical
# simulators (one core each), one reached directly, one through `modelyard up` (one core), driven at once by
# one `modelyard bench` process on its own core. Meant for a machine with >= 4 cores (the device machine);
# everything on 127.0.0.1, bounded in count and time.
# usage: PY=python3 benchmarks/gateway_scale.sh [CONCURRENCIES] [NUM_REQUESTS] [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CONC="${1:-100,250,500}"; N="${2:-500}"; RESULTS="${3:-benchmarks/results/gateway_scale-$(date +%Y%m%d-%H%M%S)}"
PY="${PY:-.venv/bin/python}"
pin() { if command -v taskset >/dev/null && [ "$(nproc)" -ge 4 ]; then echo "taskset -c $1"; fi; }
WORK=$(mktemp -d)
. benchmarks/lib.sh
P_A=$(port); P_B=$(port); P_GW=$(port)
export MODELYARD_API_KEY=bench-key OPENAI_API_KEY=bench-key
SIM_ARGS=(--model sim --profile tiny-cpu --param itl_base_s=0.05 --param prefill_overhead_s=0.02
          --param max_num_seqs=2048 --param kv_blocks=1000000)
$(pin 0) $PY -m modelyard simulate --host 127.0.0.1 --port "$P_A" "${SIM_ARGS[@]}" > "$WORK/sim-a.log" 2>&1 &
track $!
$(pin 3) $PY -m modelyard simulate --host 127.0.0.1 --port "$P_B" "${SIM_ARGS[@]}" > "$WORK/sim-b.log" 2>&1 &
track $!
cat > "$WORK/yard.yaml" <<YAML
state_dir: $WORK/state
gateway: {host: 127.0.0.1, port: $P_GW}
models:
  - {name: sim, engine: openai, urls: ["http://127.0.0.1:$P_B"], admission: {max_concurrency: 4096, max_queue: 4096}}
YAML
wait_up "http://127.0.0.1:$P_A/health"; wait_up "http://127.0.0.1:$P_B/health"
$(pin 1) $PY -m modelyard up -f "$WORK/yard.yaml" > "$WORK/up.log" 2>&1 &
track $!
wait_up "http://127.0.0.1:$P_GW/health"
$(pin 2) $PY -m modelyard bench --target "direct=http://127.0.0.1:$P_A/v1" --target "gateway=http://127.0.0.1:$P_GW/v1" \
    --model sim --endpoint chat --dataset random --input-len 32 --output-len 64 \
    --concurrency "$CONC" --num-requests "$N" --warmup 8 --max-duration 120 --no-progress --output-dir "$RESULTS"
echo "gateway process CPU (user+sys s): $(ps -o times= -p "${PIDS[2]}" 2>/dev/null || echo n/a)"
echo "results: $RESULTS"
