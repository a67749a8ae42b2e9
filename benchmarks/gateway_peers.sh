#!/usr/bin/env bash
# Issue 6: modelyard's gateway vs LiteLLM's proxy and the Rust vllm-router, in one run, on one fast upstream.
#   upstream : benchmarks/mock_upstream.py, 64 tokens 5 ms apart, no prefill cost, no concurrency limit
#   direct   : the upstream itself (baseline)
#   modelyard: `modelyard up`, engine openai, gateway.workers 1, a store key with rpm/tpm/concurrency/budget
#              limits (SQLite), usage recorded (SQLite)
#   litellm  : LiteLLM proxy, 1 worker, master key, no database
#   vllm-router: round robin over the one upstream
# Each proxy on its own core (taskset). 2-3 cores: every proxy on core 0, upstream + load generator on core 1.
# >= 8 cores: modelyard, vllm-router, litellm on cores 0, 1, 2, then load generator processes (`modelyard bench`,
# one per core, the load split between them and the results merged) and the upstream's worker processes share
# the rest. One `modelyard bench` invocation group per level, every target loaded at once for --duration seconds.
# Writes results.json, table.md and gateway_peers.png to benchmarks/results/gateway_peers-<date>/.
#
# usage: benchmarks/gateway_peers.sh [--levels 1,16,64,256] [--duration 15] [--no-litellm] [--no-vllm-router] [--clients K]
#                                    [--upstream-workers U] [--direct-up-to 256] [--soak [SECONDS]] [--out DIR]
#   --no-vllm-router: modelyard and the direct target only (when the peer does not fit the device carry).
#   --levels 1,16,64,256,1024 on the many-core machine; --soak: after the levels, SECONDS (default 600) at 64
#   streams through modelyard alone, its RSS sampled every 10 s. Levels above --direct-up-to leave the direct
#   target out: at 1,024 streams it alone would take most of the load generators' and the upstream's cores.
# env: PY (python with modelyard, default .venv/bin/python), PEERS_VENV (default .peers-venv, created with the
#   pinned peers when missing), VLLM_ROUTER / LITELLM (the peers' commands; default from PEERS_VENV),
#   PYSPY (a py-spy binary: after the levels, one more pass at the last level, not in the table, while py-spy
#   samples the modelyard gateway; its top functions go to RESULTS/pyspy-modelyard.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
LEVELS=1,16,64,256; DURATION=15; DIRECT_MAX=256; LITELLM_ON=1; VR_ON=1; CLIENTS=""; UPW=""; SOAK=0; OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --levels) LEVELS=$2; shift 2;; --duration) DURATION=$2; shift 2;; --no-litellm) LITELLM_ON=0; shift;; --no-vllm-router) VR_ON=0; shift;;
    --clients) CLIENTS=$2; shift 2;; --direct-up-to) DIRECT_MAX=$2; shift 2;; --upstream-workers) UPW=$2; shift 2;; --out) OUTDIR=$2; shift 2;;
    --soak) SOAK=600; if [[ "${2:-}" =~ ^[0-9]+$ ]]; then SOAK=$2; shift; fi; shift;;
    *) echo "unknown argument $1"; exit 2;;
  esac
done
PY="${PY:-.venv/bin/python}"; PEERS_VENV="${PEERS_VENV:-.peers-venv}"
LITELLM_VERSION=1.103.0   # newer releases need certifi>=2026.10.19, which the registry here lacks
VLLM_ROUTER_VERSION=0.1.17
VLLM_ROUTER="${VLLM_ROUTER:-$PEERS_VENV/bin/vllm-router}"; LITELLM="${LITELLM:-$PEERS_VENV/bin/litellm}"
if { [ $VR_ON = 1 ] && [ ! -x "$VLLM_ROUTER" ]; } || { [ $LITELLM_ON = 1 ] && [ ! -x "$LITELLM" ]; }; then
  echo "creating $PEERS_VENV with litellm[proxy]==$LITELLM_VERSION vllm-router==$VLLM_ROUTER_VERSION ..."
  python3 -m venv "$PEERS_VENV"
  "$PEERS_VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" "vllm-router==$VLLM_ROUTER_VERSION"
fi
RESULTS="${OUTDIR:-benchmarks/results/gateway_peers-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$RESULTS"
{ git rev-parse --short HEAD 2>/dev/null || cat .whl/src.commit 2>/dev/null || echo unknown; } > "$RESULTS/commit.txt"
WORK=$(mktemp -d)
. benchmarks/lib.sh
# on exit: keep the logs; SIGINT to every process started here, then SIGTERM to what is left (a background
# process of a non-interactive shell may ignore SIGINT), so that the wait in lib.sh's cleanup ends
keep_logs() {
  cp "$WORK"/*.log "$RESULTS/" 2>/dev/null || true
  cp "$WORK"/state/logs/modelyard.log "$RESULTS/modelyard-gateway.log" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 2
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  cleanup
}
trap keep_logs EXIT
# wait for URL; if it never answers, show the log of the process that should serve it
up() { for _ in $(seq 1 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done; echo "not up: $1"; tail -30 "$2"; exit 1; }
NCPU=$(nproc)
# cores: proxies, load generators, upstream workers
if [ "$NCPU" -ge 8 ]; then
  CORE_MY=0; CORE_VR=1; CORE_LL=2; FREE=$((2 + LITELLM_ON))   # first core left for the others
  DEFAULT_CLIENTS=4; [ "$NCPU" -ge 16 ] && DEFAULT_CLIENTS=8   # a power of two divides every level
  CLIENTS=${CLIENTS:-$DEFAULT_CLIENTS}; UPW=${UPW:-$(( NCPU - FREE - CLIENTS ))}
  CLIENT_CORES=$(seq -s, $FREE $((FREE - 1 + CLIENTS))); UP_CORES=$(seq -s, $((FREE + CLIENTS)) $((NCPU - 1)))
else
  CORE_MY=0; CORE_VR=0; CORE_LL=0; CLIENTS=${CLIENTS:-1}; UPW=${UPW:-1}
  CLIENT_CORES=$((NCPU - 1)); UP_CORES=$((NCPU - 1))
fi
pin() { if command -v taskset >/dev/null; then echo "taskset -c $1"; fi; }
echo "cores: modelyard $CORE_MY, vllm-router $CORE_VR, litellm $CORE_LL, $CLIENTS load generator(s) on" \
     "$CLIENT_CORES, $UPW upstream worker(s) on $UP_CORES ($NCPU cores)"

P_UP=$(port); P_MY=$(port); P_VR=$(port); P_VRM=$(port); P_LL=$(port)
$PY benchmarks/mock_upstream.py --port "$P_UP" --model mock --tokens 64 --itl-ms 5 --workers "$UPW" \
    --cpus "$UP_CORES" > "$WORK/upstream.log" 2>&1 &
PID_UP=$!; track $PID_UP
up "http://127.0.0.1:$P_UP/health" "$WORK/upstream.log"

# modelyard: store key with limits far above the load, usage recorded in SQLite; one gateway process
WORKERS_LINE=""
if grep -qE '^\s+workers:' modelyard/spec/schema.py; then WORKERS_LINE=", workers: 1"; fi
cat > "$WORK/yard.yaml" <<YAML
state_dir: $WORK/state
gateway: {host: 127.0.0.1, port: $P_MY$WORKERS_LINE}
store: {record_usage: true}
models:
  - {name: mock, engine: openai, urls: ["http://127.0.0.1:$P_UP"], admission: {max_concurrency: 100000, max_queue: 100000}}
YAML
export MY_KEY LL_KEY=sk-bench-litellm DIRECT_KEY=unused
MY_KEY=$($PY -m modelyard keys create --state-dir "$WORK/state" --name bench --models mock --rpm 100000000 \
    --tpm 100000000000 --max-concurrency 100000 --budget-tokens 1000000000000 2>"$WORK/keys.log")
MODELYARD_API_KEY="static-$RANDOM$RANDOM" $(pin $CORE_MY) $PY -m modelyard up -f "$WORK/yard.yaml" \
    > "$WORK/modelyard.log" 2>&1 &
PID_MY=$!; track $PID_MY

if [ $VR_ON = 1 ]; then
  $(pin $CORE_VR) "$VLLM_ROUTER" --host 127.0.0.1 --port "$P_VR" --worker-urls "http://127.0.0.1:$P_UP" \
      --policy round_robin --prometheus-port "$P_VRM" --log-level warning > "$WORK/vllm-router.log" 2>&1 &
  PID_VR=$!; track $PID_VR
fi

TARGETS=(--target "direct=http://127.0.0.1:$P_UP/v1@DIRECT_KEY" --target "modelyard=http://127.0.0.1:$P_MY/v1@MY_KEY")
PIDS_JSON="{\"upstream\": $PID_UP, \"modelyard\": $PID_MY"
if [ $VR_ON = 1 ]; then
  TARGETS+=(--target "vllm-router=http://127.0.0.1:$P_VR/v1@DIRECT_KEY")
  PIDS_JSON+=", \"vllm-router\": $PID_VR"
fi
if [ $LITELLM_ON = 1 ]; then
  cat > "$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: mock
    litellm_params: {model: openai/mock, api_base: "http://127.0.0.1:$P_UP/v1", api_key: unused}
general_settings: {master_key: $LL_KEY}
litellm_settings: {drop_params: true, telemetry: false}
YAML
  LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR $(pin $CORE_LL) "$LITELLM" --config "$WORK/litellm.yaml" \
      --host 127.0.0.1 --port "$P_LL" --num_workers 1 > "$WORK/litellm.log" 2>&1 &
  PID_LL=$!; track $PID_LL
  TARGETS+=(--target "litellm=http://127.0.0.1:$P_LL/v1@LL_KEY")
  PIDS_JSON+=", \"litellm\": $PID_LL"
fi
PIDS_JSON+="}"
NO_DIRECT=("${TARGETS[@]:2}")
up "http://127.0.0.1:$P_MY/health" "$WORK/modelyard.log"
if [ $VR_ON = 1 ]; then up "http://127.0.0.1:$P_VR/health" "$WORK/vllm-router.log"; fi
if [ $LITELLM_ON = 1 ]; then up "http://127.0.0.1:$P_LL/health/liveliness" "$WORK/litellm.log"; fi
echo "$PIDS_JSON" > "$WORK/pids.json"
REPORT="$PY benchmarks/gateway_peers_report.py"
COMMON=(--model mock --endpoint chat --dataset random --input-len 32 --output-len 64 --warmup 0 --no-progress
        --no-plots --drain-timeout 15 --request-timeout 120)

# bench CLIENTS processes in parallel (fewer when the level is smaller), each with its share of the streams
bench_group() {  # $1 label, $2 total concurrency, $3 seconds, $4.. extra targets (default: all)
  local label=$1 conc=$2 secs=$3; shift 3
  local targets=("${TARGETS[@]}"); [ $# -gt 0 ] && targets=("$@")
  local k=$CLIENTS; while [ $k -gt 1 ] && [ $((conc % k)) -ne 0 ]; do k=$((k - 1)); done
  local per=$((conc / k)) pids=() i
  IFS=, read -r -a cores <<< "$CLIENT_CORES"
  for i in $(seq 0 $((k - 1))); do
    $(pin "${cores[$((i % ${#cores[@]}))]}") $PY -m modelyard bench "${targets[@]}" "${COMMON[@]}" \
        --concurrency "$per" --num-requests $((per * NREQ_PER_STREAM)) --max-duration "$secs" --seed "$i" \
        --output-dir "$WORK/$label/client$i" > "$WORK/$label-client$i.log" 2>&1 &
    pids+=($!); track $!
  done
  local rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc = 0 ] || { echo "a bench client failed at $label:"; tail -20 "$WORK/$label"-client*.log; exit 1; }
}

NREQ_PER_STREAM=400   # more than a level can send in its --duration: levels end on time, not on count
echo "warm-up ..."; bench_group warmup 4 3
for c in ${LEVELS//,/ }; do
  echo "level c=$c: ${DURATION}s ..."
  $REPORT snapshot "$WORK/pids.json" > "$WORK/c$c.before.json"
  if [ "$c" -le "$DIRECT_MAX" ]; then bench_group "c$c" "$c" "$DURATION"; else bench_group "c$c" "$c" "$DURATION" "${NO_DIRECT[@]}"; fi
  $REPORT snapshot "$WORK/pids.json" > "$WORK/c$c.after.json"
  mkdir -p "$RESULTS/requests"   # every request's timings (start, TTFT, ...), to see when the slow ones happened
  for f in "$WORK/c$c"/client*/requests.csv; do [ -f "$f" ] && gzip -c "$f" > "$RESULTS/requests/c$c-$(basename "$(dirname "$f")").csv.gz"; done
done
if [ -n "${PYSPY:-}" ]; then
  last=${LEVELS##*,}; echo "profile pass: c=$last, py-spy on modelyard ..."
  IFS=, read -r -a ccores <<< "$CLIENT_CORES"
  $(pin "${ccores[0]}") "$PYSPY" record --pid "$PID_MY" --subprocesses --nonblocking --rate 200 --format raw \
      --duration "$DURATION" --output "$WORK/pyspy-raw.txt" > "$WORK/pyspy.log" 2>&1 &
  SPY=$!; track $SPY
  bench_group profile "$last" "$DURATION" "${NO_DIRECT[@]}"
  wait "$SPY" || true
  $REPORT pyspy "$WORK/pyspy-raw.txt" > "$RESULTS/pyspy-modelyard.txt" 2>&1 || true
  cp "$WORK/pyspy-raw.txt" "$RESULTS/" 2>/dev/null || true
fi
if [ "$SOAK" -gt 0 ]; then
  echo "soak: ${SOAK}s at 64 streams through modelyard ..."
  $REPORT rss "$PID_MY" 10 > "$WORK/soak-rss.jsonl" & RSS_PID=$!; track $RSS_PID
  NREQ_PER_STREAM=$((SOAK * 4))   # a stream does < 3.2 req/s (64 tokens 5 ms apart); bench encodes them all up front
  bench_group soak 64 "$SOAK" --target "modelyard=http://127.0.0.1:$P_MY/v1@MY_KEY"
  sleep 1; kill "$RSS_PID" 2>/dev/null || true
fi
cp "$WORK"/*.log "$RESULTS/" 2>/dev/null || true
$PY -m modelyard usage --state-dir "$WORK/state" --by key --since 1h > "$RESULTS/modelyard-usage.txt" 2>&1 || true
$REPORT merge "$WORK" "$RESULTS" --levels "$LEVELS" --cores "modelyard=$CORE_MY,vllm-router=$CORE_VR,litellm=$CORE_LL" \
    --clients "$CLIENTS" --upstream-workers "$UPW"
echo "results: $RESULTS"
