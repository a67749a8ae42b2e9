#!/usr/bin/env bash
# The gateway's cost per relayed token, one process: a fast simulator (5 ms between tokens, no prefill, 64
# tokens) reached directly and through one gateway process (uvloop, a store key with rpm/tpm limits, usage
# recorded), the two taking turns in one `modelyard bench --alternate` run; the gateway's CPU seconds per
# 1,000 relayed tokens, and its read and write system calls per token, from /proc. Each REF (a commit, or a
# folder holding a modelyard tree, e.g. one with compiled modules; default: this checkout) gets its own
# simulator and gateway, one after the other. Pinned with taskset: the gateway on core 1, simulator and load
# on core 0.
# PYSPY=/path/to/py-spy also records a profile of each gateway (raw folded stacks, prof-REF.txt).
# WRAP=benchmarks/gc_pauses.py: the gateway run with its garbage collector passes timed (in gateway-REF.log).
# REDIS=1: the per-key limits in a private redis-server (unix socket), as with several gateway workers.
# usage: benchmarks/gateway_hot_path.sh [CONCURRENCY] [NUM_REQUESTS] [REF ...]
set -euo pipefail
cd "$(dirname "$0")/.."
CONC="${1:-64}"; N="${2:-1000}"; shift 2 || true
REFS=("$@"); [ ${#REFS[@]} -gt 0 ] || REFS=(.)
PY="${PY:-.venv/bin/python}"
RESULTS="benchmarks/results/gateway_hot_path-$(date +%Y%m%d-%H%M%S)"; mkdir -p "$RESULTS"
WORK=$(mktemp -d)
. benchmarks/lib.sh
pin() { if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then echo "taskset -c $1"; fi; }
cleanup_worktrees() { for r in "${REFS[@]}"; do [ "$r" = . ] || [ -d "$r" ] || git worktree remove --force "$WORK/src-$r" 2>/dev/null || true; done; cleanup; }
trap cleanup_worktrees EXIT
if [ -n "${REDIS:-}" ]; then
  REDIS_BIN=$($PY -c "from modelyard.fleet.redis_server import redis_server_binary; print(redis_server_binary())")
  $(pin 0) "$REDIS_BIN" --port 0 --unixsocket "$WORK/redis.sock" --save "" --appendonly no > "$WORK/redis.log" 2>&1 &
  track $!; for _ in $(seq 50); do [ -S "$WORK/redis.sock" ] && break; sleep 0.1; done
  export REDIS_URL="unix://$WORK/redis.sock"
fi
for REF in "${REFS[@]}"; do
  SRC=""
  if [ -d "$REF" ] && [ "$REF" != . ]; then SRC=$(cd "$REF" && pwd); REF=$(basename "$SRC")  # a folder: used as it is
  elif [ "$REF" != . ]; then SRC="$WORK/src-$REF"; git worktree add -f --detach "$SRC" "$REF" >/dev/null; fi
  P_SIM=$(port); P_GW=$(port); STATE="$WORK/state-$REF"
  $(pin 0) $PY -m modelyard simulate --host 127.0.0.1 --port "$P_SIM" --model sim --profile tiny-cpu \
    --param itl_base_s=0.005 --param prefill_overhead_s=0 --param prefill_s_per_token=0 \
    --param max_num_seqs=4096 --param kv_blocks=1000000 > "$WORK/sim-$REF.log" 2>&1 &
  SIM=$!; track $SIM
  cat > "$WORK/yard-$REF.yaml" <<YAML
state_dir: $STATE
gateway: {host: 127.0.0.1, port: $P_GW}
models:
  - {name: sim, engine: openai, urls: ["http://127.0.0.1:$P_SIM"], admission: {max_concurrency: 4096, max_queue: 4096}}
YAML
  export GWKEY; GWKEY=$($PY -m modelyard keys create --name bench --rpm 10000000 --tpm 1000000000 --state-dir "$STATE" \
    | grep -o 'my-[A-Za-z0-9_-]*' | head -1)
  wait_up "http://127.0.0.1:$P_SIM/health"
  SRC="$SRC" $(pin 1) $PY ${WRAP:-} benchmarks/hot_path_gateway.py "$WORK/yard-$REF.yaml" > "$RESULTS/gateway-$REF.log" 2>&1 &
  GW=$!; track $GW
  wait_up "http://127.0.0.1:$P_GW/health"
  bench() { $(pin 0) $PY -m modelyard bench --model sim --endpoint chat --dataset random --input-len 32 --output-len 64 \
    --ignore-eos --no-progress "$@"; }
  bench --target "gateway=http://127.0.0.1:$P_GW/v1@GWKEY" --concurrency 16 --num-requests 64 --warmup 0 \
    --output-dir "$WORK/warm-$REF" >/dev/null 2>&1
  C0=$(awk '{print $14+$15}' "/proc/$GW/stat"); IO0=$(awk '/^sysc[rw]:/ {printf "%s ", $2}' "/proc/$GW/io")
  SPY=""; if [ -n "${PYSPY:-}" ]; then
    "$PYSPY" record -p "$GW" -d 15 -r 200 -f raw -o "$RESULTS/prof-$REF.txt" --nonblocking >/dev/null 2>&1 & SPY=$!; fi
  bench --alternate --target "direct=http://127.0.0.1:$P_SIM/v1" --target "gateway=http://127.0.0.1:$P_GW/v1@GWKEY" \
    --concurrency "$CONC" --num-requests "$N" --warmup 8 --max-duration 120 --output-dir "$RESULTS/bench-$REF" \
    > "$RESULTS/bench-$REF.txt" 2>&1
  C1=$(awk '{print $14+$15}' "/proc/$GW/stat"); IO1=$(awk '/^sysc[rw]:/ {printf "%s ", $2}' "/proc/$GW/io")
  [ -z "$SPY" ] || wait "$SPY" || true
  TOKENS=$(grep "Output tokens " "$RESULTS/bench-$REF.txt" | awk -F'│' '{gsub(/ /,"",$4); print $4}')
  echo "$REF: gateway CPU $(( C1 - C0 )) ticks for $TOKENS tokens = $($PY -c "print(round(($C1-$C0)/100/$TOKENS*1000, 4))") s per 1k tokens" \
    | tee -a "$RESULTS/cpu.txt"
  read -r R0 W0 <<< "$IO0"; read -r R1 W1 <<< "$IO1"  # read- and write-family system calls (/proc/PID/io)
  echo "$REF: gateway system calls per relayed token: $($PY -c "print(round(($R1-$R0)/$TOKENS, 2))") reads, \
$($PY -c "print(round(($W1-$W0)/$TOKENS, 2))") writes" | tee -a "$RESULTS/cpu.txt"
  grep -E "TTFT (median|p99)|ITL (median|p99)|Request throughput" "$RESULTS/bench-$REF.txt" | tee -a "$RESULTS/cpu.txt"
  kill -INT "$GW" "$SIM" 2>/dev/null || true
done
echo "results: $RESULTS"
