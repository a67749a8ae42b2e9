#!/usr/bin/env bash
# gateway.workers: how the gateway scales with its cores. `modelyard up` with W gateway workers pinned to W cores,
# for each W in --workers, one after another and loaded the same way: benchmarks/mock_upstream.py (64 tokens 5 ms
# apart) on its own cores, --clients `modelyard bench` processes on theirs sharing --concurrency streams for
# --duration seconds, through a store key with rpm/tpm/concurrency/budget limits (every request asks the shared
# limiter: the private Redis when W > 1) with usage recorded in SQLite. The first W is the baseline of the ratios.
# Cores (>= 12, e.g. the device machine's 16): gateway 0..3, clients 4..(4+K-1), upstream the rest. On fewer cores
# everything shares them (a smoke run, not a measurement). Writes results.json and table.md to the output folder.
# usage: benchmarks/gateway_workers.sh [--workers 1,2,4] [--concurrency 1024] [--duration 15] [--clients 8] [--out DIR]
# env: PY (python with modelyard, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
WORKER_LEVELS=1,2,4; CONC=1024; DURATION=15; CLIENTS=""; OUTDIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKER_LEVELS=$2; shift 2;; --concurrency) CONC=$2; shift 2;; --duration) DURATION=$2; shift 2;;
    --clients) CLIENTS=$2; shift 2;; --out) OUTDIR=$2; shift 2;;
    *) echo "unknown argument $1"; exit 2;;
  esac
done
PY="${PY:-.venv/bin/python}"
RESULTS="${OUTDIR:-benchmarks/results/gateway_workers-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
. benchmarks/lib.sh
NCPU=$(nproc)
if [ "$NCPU" -ge 12 ]; then
  CLIENTS=${CLIENTS:-8}; CLIENT_FIRST=4; UP_FIRST=$((4 + CLIENTS)); UPW=$((NCPU - UP_FIRST))
  gw_cores() { seq -s, 0 $(($1 - 1)); }
  CLIENT_CORES=$(seq -s, $CLIENT_FIRST $((UP_FIRST - 1))); UP_CORES=$(seq -s, "$UP_FIRST" $((NCPU - 1)))
else
  CLIENTS=${CLIENTS:-1}; UPW=1; gw_cores() { echo "0-$((NCPU - 1))"; }
  CLIENT_CORES=0; UP_CORES=$((NCPU - 1))
fi
echo "cores: gateway from 0, $CLIENTS load generator(s) on $CLIENT_CORES, $UPW upstream worker(s) on $UP_CORES" \
     "($NCPU cores)" | tee "$RESULTS/setup.txt"
P_UP=$(port)
$PY benchmarks/mock_upstream.py --port "$P_UP" --model mock --tokens 64 --itl-ms 5 --workers "$UPW" \
    --cpus "$UP_CORES" > "$WORK/upstream.log" 2>&1 &
track $!
wait_up "http://127.0.0.1:$P_UP/health"
COMMON=(--model mock --endpoint chat --dataset random --input-len 32 --output-len 64 --warmup 0 --no-progress
        --no-plots --drain-timeout 15 --request-timeout 120)

bench_group() {  # $1 label, $2 total concurrency, $3 seconds, $4 target
  local label=$1 conc=$2 secs=$3 target=$4 k=$CLIENTS pids=() i
  while [ "$k" -gt 1 ] && [ $((conc % k)) -ne 0 ]; do k=$((k - 1)); done
  local per=$((conc / k))
  IFS=, read -r -a cores <<< "$CLIENT_CORES"
  for i in $(seq 0 $((k - 1))); do
    taskset -c "${cores[$((i % ${#cores[@]}))]}" $PY -m modelyard bench --target "$target" "${COMMON[@]}" \
        --concurrency "$per" --num-requests $((per * 400)) --max-duration "$secs" --seed "$i" \
        --output-dir "$WORK/$label/client$i" > "$WORK/$label-client$i.log" 2>&1 &
    pids+=($!)
  done
  local rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc = 0 ] || { echo "a bench client failed at $label:"; tail -20 "$WORK/$label"-client*.log; exit 1; }
}

export MY_KEY
for W in ${WORKER_LEVELS//,/ }; do
  P_GW=$(port); STATE="$WORK/w$W/state"
  cat > "$WORK/yard-w$W.yaml" <<YAML
state_dir: $STATE
gateway: {host: 127.0.0.1, port: $P_GW, workers: $W}
store: {record_usage: true}
models:
  - {name: mock, engine: openai, urls: ["http://127.0.0.1:$P_UP"], admission: {max_concurrency: 100000, max_queue: 100000}}
YAML
  MY_KEY=$($PY -m modelyard keys create --state-dir "$STATE" --name bench --models mock --rpm 100000000 \
      --tpm 100000000000 --max-concurrency 100000 --budget-tokens 1000000000000 2>/dev/null)
  MODELYARD_API_KEY="static-$RANDOM$RANDOM" taskset -c "$(gw_cores "$W")" $PY -m modelyard up -f "$WORK/yard-w$W.yaml" \
      > "$WORK/up-w$W.log" 2>&1 &
  UP_PID=$!; track $UP_PID
  wait_up "http://127.0.0.1:$P_GW/health"
  echo "{\"modelyard\": $UP_PID}" > "$WORK/pids-w$W.json"
  echo "w$W: warm-up, then ${DURATION}s at $CONC streams ..."
  bench_group "warm-w$W" "$CLIENTS" 3 "w$W=http://127.0.0.1:$P_GW/v1@MY_KEY"
  $PY benchmarks/gateway_peers_report.py snapshot "$WORK/pids-w$W.json" > "$WORK/w$W.before.json"
  bench_group "w$W" "$CONC" "$DURATION" "w$W=http://127.0.0.1:$P_GW/v1@MY_KEY"
  $PY benchmarks/gateway_peers_report.py snapshot "$WORK/pids-w$W.json" > "$WORK/w$W.after.json"
  kill -INT "$UP_PID"; wait "$UP_PID" || true
  cp "$STATE/logs/modelyard.log" "$RESULTS/modelyard-w$W.log" 2>/dev/null || true
done
$PY - "$WORK" "$RESULTS" "$WORKER_LEVELS" "$CONC" <<'PY'
import importlib.util, json, sys
from pathlib import Path
work, results, levels, conc = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
spec = importlib.util.spec_from_file_location("report", "benchmarks/gateway_peers_report.py")
report = importlib.util.module_from_spec(spec); spec.loader.exec_module(report)
out = {}
for w in levels:
    targets, _ = report.merge_level(work / f"w{w}")
    m = targets[f"w{w}"]
    b, a = (json.loads((work / f"w{w}.{s}.json").read_text())["modelyard"] for s in ("before", "after"))
    m["cpu_s"] = a["cpu_s"] - b["cpu_s"]
    m["cpu_s_per_1k_tokens"] = 1000 * m["cpu_s"] / m["relayed_tokens"] if m["relayed_tokens"] else None
    out[w] = m
(results / "results.json").write_text(json.dumps({"concurrency": int(conc), "by_workers": out}, indent=1))
base = out[levels[0]]["request_throughput"]
f = report.fmt
lines = [f"| gateway workers (cores) | req/s at {conc} streams | vs {levels[0]} | TTFT p50 / p99 (ms) | "
         "ITL p50 / p99 (ms) | errors | CPU s / 1k tokens |", "|---|---|---|---|---|---|---|"]
for w, m in out.items():
    lines.append(f"| {w} | {f(m['request_throughput'])} | {m['request_throughput'] / base:.2f}x | "
                 f"{f(m['ttft_p50_ms'])} / {f(m['ttft_p99_ms'])} | {f(m['itl_p50_ms'])} / {f(m['itl_p99_ms'])} | "
                 f"{m['failed']} | {f(m['cpu_s_per_1k_tokens'], 3)} |")
(results / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
cp "$WORK"/*.log "$RESULTS/" 2>/dev/null || true
echo "results: $RESULTS"
