#!/usr/bin/env bash
# The gateway in front of a simulated GPU engine (profile llama-3.1-8b-h100): simulator direct vs through
# `modelyard up` (engine: openai pointing at it), both loaded at once, a sweep over concurrencies.
# usage: benchmarks/simulator_gateway.sh [NUM_REQUESTS] [CONCURRENCIES]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-128}"; CONC="${2:-1,16,64}"
PY=.venv/bin/python
WORK=$(mktemp -d); RESULTS="benchmarks/results/simulator_gateway-$(date +%Y%m%d-%H%M%S)"
. benchmarks/lib.sh
P_SIM=$(port); P_GW=$(port)
export MODELYARD_API_KEY=bench-key OPENAI_API_KEY=bench-key
.venv/bin/modelyard simulate --host 127.0.0.1 --port "$P_SIM" --model llama --profile llama-3.1-8b-h100 \
    --param startup_s=0 > "$WORK/sim.log" 2>&1 &
track $!
cat > "$WORK/yard.yaml" <<YAML
state_dir: $WORK/state
gateway: {host: 127.0.0.1, port: $P_GW}
models:
  - {name: llama, engine: openai, urls: ["http://127.0.0.1:$P_SIM"], admission: {max_concurrency: 1024}}
YAML
wait_up "http://127.0.0.1:$P_SIM/health"
.venv/bin/modelyard up -f "$WORK/yard.yaml" > "$WORK/up.log" 2>&1 &
track $!
wait_up "http://127.0.0.1:$P_GW/health"
.venv/bin/modelyard bench --target "sim-direct=http://127.0.0.1:$P_SIM/v1" --target "sim-gateway=http://127.0.0.1:$P_GW/v1" \
    --model llama --endpoint chat --dataset mtbench --output-len 128 --ignore-eos \
    --concurrency "$CONC" --num-requests "$N" --warmup 4 --max-duration 120 --output-dir "$RESULTS"
echo "results: $RESULTS"
