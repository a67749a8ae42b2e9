#!/usr/bin/env bash
# Routing on a shared-prefix workload (issue 5): REPLICAS simulator replicas, each on its own loopback address
# (127.0.0.1, 127.0.0.2, ...) on one port, prefix cache on, KV capacity for about its share of the groups' prompts
# but not for all of them, and a prefill cost that makes a cache miss ~10x slower than a hit. `modelyard bench
# --dataset shared-prefix` drives them in an open loop at several rates through
#   - the gateway (`modelyard up`, one model per routing profile: round-robin, least-load, default, and precise
#     (issue 17) where the modelyard knows it: the replicas publish KV events, which only that model subscribes to),
#     and
#   - the Rust vllm-router from PyPI (pinned, in its own venv, installed on first use) with round_robin and
#     cache_aware,
# one policy at a time, every level starting from empty prefix caches (POST /reset_prefix_cache on each replica).
# Per level it records the bench summary, the per-request CSV and the replicas' (and the router's) counters before
# and after; benchmarks/routing_report.py turns them into routing_compare.{json,md,png}. Everything listens on
# 127.0.0.0/8; bounded in count (NUM_REQUESTS a level) and time (about 14 minutes with the defaults on 2 busy cores).
# usage: benchmarks/routing_compare.sh [RATES] [OUTPUT_DIR]
#   env: REPLICAS (default 4, 2..8), NUM_REQUESTS (default 198: one pass over the dataset), GATEWAY_WORKERS
#        (gateway.workers, default 1; "auto" is one per CPU, each with its own routing state), POLICIES (default all
#        five; add modelyard:default-tuned for the default profile with TUNED_SATURATION (default
#        "{max_waiting: 16}") and TUNED_PREFIX (default "{}") as its plugins' params), PEER_VENV (vllm-router's
#        venv), PY, COMMIT (the commit to record when the tree is not a git checkout), SIM_PARAMS_ARGS (the
#        simulators' parameters, "k=v k=v", instead of the ones below), WORKLOAD_ARGS (below), PRIME (N: before each
#        level, the workload's first N requests at once through the policy under test, then the counters: the level
#        measures a warm cluster, not the first request of each system prompt), TENANTS (a tenant mix: one key per
#        tenant and one bench per tenant at once, "SHARE|WORKLOAD ARGS;SHARE|..." with each tenant's share of
#        NUM_REQUESTS and of the rate, PRIME per tenant as "SHARE|PRIME|ARGS"; benchmarks/routing_proof.sh makes it),
#        POLICY_RATES (other rates for some policies, "POLICY=R,R POLICY=R": a policy that saturates early need not
#        run its slowest levels), DRAIN_S (how long a level waits for its last answers, default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
RATES="${1:-4,8,12,16,24}"; RESULTS="${2:-benchmarks/results/routing_compare-$(date +%Y%m%d-%H%M%S)}"
REPLICAS="${REPLICAS:-4}"; N="${NUM_REQUESTS:-198}"; GATEWAY_WORKERS="${GATEWAY_WORKERS:-1}"
POLICIES="${POLICIES:-modelyard:round-robin,modelyard:least-load,modelyard:default,vllm-router:round_robin,vllm-router:cache_aware}"
TUNED_SATURATION="${TUNED_SATURATION:-{max_waiting: 16\}}"; TUNED_PREFIX="${TUNED_PREFIX:-{\}}"
VLLM_ROUTER_VERSION=0.1.17
PEER_VENV="${PEER_VENV:-$HOME/.cache/modelyard/peers/vllm-router-$VLLM_ROUTER_VERSION}"
PY="${PY:-.venv/bin/python}"
if [ "$REPLICAS" -lt 2 ] || [ "$REPLICAS" -gt 8 ]; then echo "REPLICAS must be within 2..8"; exit 2; fi

# the peer router, pinned, in its own venv (never in .venv)
if ! "$PEER_VENV/bin/vllm-router" --help >/dev/null 2>&1; then
  echo "installing vllm-router==$VLLM_ROUTER_VERSION into $PEER_VENV"
  python3 -m venv "$PEER_VENV"
  "$PEER_VENV/bin/pip" install -q "vllm-router==$VLLM_ROUTER_VERSION"
fi

# the model: a miss on a ~900-token prompt costs ~190 ms of prefill, a hit ~30 ms; 480 blocks of 16 tokens hold
# ~9 of the 11 system prompts (50 blocks each) with no room left, or one replica's share plus its conversations
SIM_PARAMS=(prefill_overhead_s=0.01 prefill_s_per_token=0.0002 itl_base_s=0.02 itl_per_seq_s=0 kv_blocks=480
            block_size=16 max_num_seqs=64 max_model_len=4096)
if [ -n "${SIM_PARAMS_ARGS:-}" ]; then read -r -a SIM_PARAMS <<< "$SIM_PARAMS_ARGS"; fi
PRIME="${PRIME:-0}"; TENANTS="${TENANTS:-}"; DRAIN_S="${DRAIN_S:-60}"; POLICY_RATES="${POLICY_RATES:-}"
rates_of() {  # POLICY: its rates
  local entry; for entry in $POLICY_RATES; do [ "${entry%%=*}" = "$1" ] && { echo "${entry#*=}"; return; }; done
  echo "$RATES"
}
# 11 groups (coprime with the replica count, so that round-robin does not pin groups to replicas by accident),
# 6 conversations of 3 turns each: 198 requests, ordered turn by turn, round-robin over groups
WORKLOAD=(--dataset shared-prefix --prefix-groups 11 --prefix-len 800 --prefix-conversations 6 --prefix-turns 3
          --input-len 32 --output-len 32 --seed 1)
# WORKLOAD_ARGS: another workload, e.g. the same one in Russian words (benchmarks/long_words_prefix.py FILE, then
# WORKLOAD_ARGS="--dataset jsonl --dataset-path FILE")
if [ -n "${WORKLOAD_ARGS:-}" ]; then read -r -a WORKLOAD <<< "$WORKLOAD_ARGS"; fi

WORK=$(mktemp -d)
. benchmarks/lib.sh
export MODELYARD_API_KEY=bench-key OPENAI_API_KEY=bench-key
mkdir -p "$RESULTS/levels"
P_SIM=$(port); P_GW=$(port); P_VR=$(port); P_VR_PROM=$(port); P_EV=$(port); P_EVR=$(port)
# KV events (vLLM's ZMQ PUB and replay ROUTER) from every replica, when this modelyard's simulator has them
HAS_EVENTS=$($PY -c "import modelyard.simulator.kv_events" 2>/dev/null && echo 1 || echo 0)
EVENTS=(); REPLAYS=()
SIMS=()
for i in $(seq 1 "$REPLICAS"); do
  args=(); for p in "${SIM_PARAMS[@]}"; do args+=(--param "$p"); done
  if [ "$HAS_EVENTS" = 1 ]; then
    args+=(--kv-events "tcp://127.0.0.$i:$P_EV" --kv-events-replay "tcp://127.0.0.$i:$P_EVR")
    EVENTS+=("tcp://127.0.0.$i:$P_EV"); REPLAYS+=("tcp://127.0.0.$i:$P_EVR")
  fi
  $PY -m modelyard simulate --host "127.0.0.$i" --port "$P_SIM" --model sim --profile tiny-cpu "${args[@]}" \
      > "$WORK/sim-$i.log" 2>&1 &
  track $!
  SIMS+=("http://127.0.0.$i:$P_SIM")
done
for u in "${SIMS[@]}"; do wait_up "$u/health"; done
URLS=$(printf '"%s", ' "${SIMS[@]}"); URLS="[${URLS%, }]"
KV=""
if [ "$HAS_EVENTS" = 1 ]; then
  KV=$(printf '"%s", ' "${EVENTS[@]}"); KR=$(printf '"%s", ' "${REPLAYS[@]}")
  KV=", kv_events: [${KV%, }], kv_replay: [${KR%, }]"
fi

# the gateway: one model per routing profile (when the installed modelyard knows `routing:`)
HAS_ROUTING=$($PY -c "from modelyard.spec.schema import OpenAIModel as M; print(int('routing' in M.model_fields))")
{
  echo "state_dir: $WORK/state"
  # one gateway process by default: each process routes with its own state (prefix index, round-robin position)
  if [ -n "$TENANTS" ]; then  # one key per tenant (TENANT_KEY_<i>), beside $MODELYARD_API_KEY
    IFS=';' read -r -a TENANT_LIST <<< "$TENANTS"; keys=""
    for i in "${!TENANT_LIST[@]}"; do export "TENANT_KEY_$i=tenant-key-$i"; keys="$keys{name: tenant$i, key_env: TENANT_KEY_$i}, "; done
    echo "gateway: {host: 127.0.0.1, port: $P_GW, workers: $GATEWAY_WORKERS, keys: [${keys%, }]}"
  else
    echo "gateway: {host: 127.0.0.1, port: $P_GW, workers: $GATEWAY_WORKERS}"
  fi
  # default-tuned: the default profile with other parameters for its saturation filter and prefix-affinity scorer
  # (TUNED_SATURATION, TUNED_PREFIX: YAML maps); used only when POLICIES names it
  TUNED=0; NOROOM=0
  [[ ",$POLICIES," == *",modelyard:default-tuned,"* ]] && TUNED=1
  # precise-noroom: the precise profile without placement under capacity (issue 17, item 3), to measure it
  [[ ",$POLICIES," == *",modelyard:precise-noroom,"* ]] && [ -n "$KV" ] && NOROOM=1
  # precise-spill: the precise profile that gives a hot prefix a second replica (spill: true; off by default)
  NOSPILL=0; [[ ",$POLICIES," == *",modelyard:precise-spill,"* ]] && [ -n "$KV" ] && NOSPILL=1
  if [ "$HAS_ROUTING" = 1 ] && [ $((TUNED + NOROOM + NOSPILL)) -gt 0 ]; then
    echo "routing:"
    echo "  plugins:"
    if [ "$TUNED" = 1 ]; then
      echo "    - {name: sat-tuned, type: saturation-filter, params: $TUNED_SATURATION}"
      echo "    - {name: prefix-tuned, type: prefix-affinity, params: $TUNED_PREFIX}"
    fi
    [ "$NOROOM" = 1 ] && echo "    - {name: precise-noroom-scorer, type: precise-prefix, params: {cold_room: false}}"
    [ "$NOSPILL" = 1 ] && echo "    - {name: precise-spill-scorer, type: precise-prefix, params: {spill: true}}"
    echo "  profiles:"
    if [ "$TUNED" = 1 ]; then
      echo "    - {name: default-tuned, filters: [ready, sat-tuned], picker: max-score,"
      echo "       scorers: [{plugin: prefix-tuned, weight: 3}, {plugin: load, weight: 1}]}"
    fi
    if [ "$NOROOM" = 1 ]; then
      echo "    - {name: precise-noroom, filters: [ready, saturation-filter], picker: max-score,"
      echo "       scorers: [{plugin: precise-noroom-scorer, weight: 3}, {plugin: load, weight: 1}]}"
    fi
    if [ "$NOSPILL" = 1 ]; then
      echo "    - {name: precise-spill, filters: [ready, saturation-filter], picker: max-score,"
      echo "       scorers: [{plugin: precise-spill-scorer, weight: 3}, {plugin: load, weight: 1}]}"
    fi
  fi
  echo "models:"
  for policy in ${POLICIES//,/ }; do
    [ "${policy%%:*}" = modelyard ] || continue
    profile=${policy#*:}; routing=""
    if [ "$HAS_ROUTING" = 1 ]; then routing=", routing: $profile"
    elif [ "$profile" != round-robin ]; then echo "skipping $policy: this modelyard has no routing profiles" >&2; continue; fi
    events=""; if [[ "$profile" == precise* ]]; then
      [ -n "$KV" ] || { echo "skipping $policy: this modelyard's simulator publishes no KV events" >&2; continue; }
      events=$KV
    fi
    echo "  - {name: $profile, engine: openai, urls: $URLS, upstream_model: sim, replicas: $REPLICAS$routing$events,"
    echo "     admission: {max_concurrency: 4096, max_queue: 4096}}"
  done
} > "$WORK/yard.yaml"
$PY -m modelyard up -f "$WORK/yard.yaml" > "$WORK/up.log" 2>&1 &
GW_PID=$!; track $GW_PID
wait_up "http://127.0.0.1:$P_GW/health"

NPROC=$(nproc); CPU=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
$PY - "$RESULTS/setup.json" <<PY
import json, sys, subprocess, time
policies = [p.replace(":", "-") for p in "$POLICIES".split(",")]
json.dump({"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "rates": "$RATES",
           "num_requests": $N, "replicas": $REPLICAS, "prime": $PRIME, "tenants": "$TENANTS", "simulators": "${SIMS[*]}".split(),
           "simulator_params": "tiny-cpu ${SIM_PARAMS[*]}", "workload": "${WORKLOAD[*]}",
           "policies": policies, "vllm_router": "$VLLM_ROUTER_VERSION",
           "commit": "${COMMIT:-}" or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                     text=True).stdout.strip(),
           "machine": "$NPROC cores, $CPU", "gateway_yaml": open("$WORK/yard.yaml").read()},
          open(sys.argv[1], "w"), indent=1)
PY
cp "$WORK/yard.yaml" "$RESULTS/yard.yaml"

bench() {  # OUT_DIR URL MODEL RATE N MAX_S KEY_VAR WORKLOAD_ARGS...: one open-loop bench (rate 0: all at once)
  local out=$1 url=$2 model=$3 rate=$4 n=$5 max_s=$6 key=$7; shift 7
  local load=(--rate "$rate"); [ "$rate" = 0 ] && load=(--concurrency "$n")
  $PY -m modelyard bench --target "$name=$url${key:+@$key}" --model "$model" "$@" "${load[@]}" \
      --num-requests "$n" --max-duration "$max_s" --warmup 0 --drain-timeout "$DRAIN_S" --no-progress --no-plots \
      --output-dir "$out"
}

run_level() {  # NAME BASE_URL MODEL RATE [ROUTER_METRICS_URL]
  local name=$1 url=$2 model=$3 rate=$4 extra=${5:-} dir max_s
  dir="$RESULTS/levels/$name/rate-$rate"; mkdir -p "$dir"
  for u in "${SIMS[@]}"; do curl -sf -X POST "$u/reset_prefix_cache" >/dev/null; done
  rm -rf "$WORK"/bench*
  max_s=$($PY -c "print(round($N / $rate + 5, 1))")
  if [ -z "$TENANTS" ]; then
    if [ "$PRIME" -gt 0 ]; then bench "$WORK/bench-prime" "$url" "$model" 0 "$PRIME" 60 "" "${WORKLOAD[@]}" \
        > "$dir/prime.log" 2>&1 || echo "  priming failed at $name rate $rate"; fi
    $PY benchmarks/routing_report.py scrape "$dir/before.json" "${SIMS[@]}" $extra
    bench "$WORK/bench" "$url" "$model" "$rate" "$N" "$max_s" "" "${WORKLOAD[@]}" > "$dir/bench.log" 2>&1 \
      || echo "  bench failed at $name rate $rate (see $dir/bench.log)"
  else  # each tenant with its key, its prompts, its share of the requests and of the rate, all at once
    local i share prime args jobs=()
    for i in "${!TENANT_LIST[@]}"; do
      IFS='|' read -r share prime args <<< "${TENANT_LIST[$i]}"; read -r -a args <<< "$args"
      if [ "$prime" -gt 0 ]; then bench "$WORK/bench-prime-$i" "$url" "$model" 0 "$prime" 60 "TENANT_KEY_$i" \
          "${args[@]}" > "$dir/prime-$i.log" 2>&1 & jobs+=($!); fi
    done
    for j in "${jobs[@]}"; do wait "$j" || echo "  priming failed at $name rate $rate"; done; jobs=()
    $PY benchmarks/routing_report.py scrape "$dir/before.json" "${SIMS[@]}" $extra
    for i in "${!TENANT_LIST[@]}"; do
      IFS='|' read -r share prime args <<< "${TENANT_LIST[$i]}"; read -r -a args <<< "$args"
      bench "$WORK/bench-t$i" "$url" "$model" "$($PY -c "print(round($rate * $share, 3))")" \
          "$($PY -c "print(max(1, round($N * $share)))")" "$max_s" "TENANT_KEY_$i" "${args[@]}" \
          > "$dir/bench-t$i.log" 2>&1 & jobs+=($!)
    done
    for j in "${jobs[@]}"; do wait "$j" || echo "  a tenant's bench failed at $name rate $rate"; done
    $PY benchmarks/routing_report.py merge "$WORK/bench" "$rate" "$WORK"/bench-t* > "$dir/bench.log" 2>&1
  fi
  $PY benchmarks/routing_report.py scrape "$dir/after.json" "${SIMS[@]}" $extra
  cp "$WORK/bench/summary.csv" "$dir/" 2>/dev/null || true
  gzip -9c "$WORK/bench/requests.csv" > "$dir/requests.csv.gz" 2>/dev/null || true
  echo "  $name rate $rate: $(grep -E 'TTFT p90|Request throughput' "$dir/bench.log" | tr -s ' ' | tr '\n' ' ')"
}

for policy in ${POLICIES//,/ }; do
  kind=${policy%%:*}; profile=${policy#*:}; name="$kind-$profile"
  echo "== $name"
  if [ "$kind" = modelyard ]; then
    grep -q "name: $profile," "$WORK/yard.yaml" || continue
    rates=$(rates_of "$policy")
    for rate in ${rates//,/ }; do run_level "$name" "http://127.0.0.1:$P_GW/v1" "$profile" "$rate"; done
  else
    "$PEER_VENV/bin/vllm-router" --host 127.0.0.1 --port "$P_VR" --worker-urls "${SIMS[@]}" --policy "$profile" \
        --prometheus-host 127.0.0.1 --prometheus-port "$P_VR_PROM" --worker-startup-check-interval 1 \
        --log-level warning > "$WORK/vllm-router-$profile.log" 2>&1 &
    VR_PID=$!; track $VR_PID
    wait_up "http://127.0.0.1:$P_VR/health"
    rates=$(rates_of "$policy")
    for rate in ${rates//,/ }; do
      run_level "$name" "http://127.0.0.1:$P_VR/v1" sim "$rate" "http://127.0.0.1:$P_VR_PROM"
    done
    kill -INT "$VR_PID" 2>/dev/null || true; wait "$VR_PID" 2>/dev/null || true
    PIDS=("${PIDS[@]/#$VR_PID/}")
  fi
done
$PY benchmarks/routing_report.py report "$RESULTS"
echo "results: $RESULTS"
