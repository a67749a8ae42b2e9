#!/usr/bin/env bash
# Issue 17's proof through benchmarks/routing_compare.sh: 16 system prompts of ~2,000 tokens, 4 simulator replicas
# whose KV caches (576 blocks of 16 tokens) hold about 4.5 of them each, so that the cluster holds the working set
# and no replica does; the replicas export vllm:cache_config_info and publish KV events; a miss on a system prompt
# costs ~0.4 s of prefill, a hit ~10 ms; 8 conversations of 3 turns per prompt (384 requests a level), each level
# from empty caches primed with each prompt's first request through the policy under test (PRIME: the level
# measures the warm cluster). Variants:
#   base     the workload above
#   tenants  three keys, each with its own prompts: one hot prompt with 40 % of the requests, 5 prompts with 30 %,
#            10 with 30 % (16 in all), one bench per key at once
#   ru       base with every word Russian (benchmarks/long_words_prefix.py: ~2.3x the characters per token)
# usage: benchmarks/routing_proof.sh VARIANT [RATES] [OUTPUT_DIR]
#   env: POLICIES (default: default, precise, round-robin, vllm-router's cache_aware), NUM_REQUESTS, and the rest of
#        routing_compare.sh's; the hit rate that no router can beat on the variant goes to OUTPUT_DIR/ceiling.json
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${1:-base}; RATES=${2:-20,40,60,80}
RESULTS=${3:-benchmarks/results/routing_proof-$VARIANT-$(date +%Y%m%d-%H%M%S)}
PY="${PY:-.venv/bin/python}"
SIM="prefill_overhead_s=0.005 prefill_s_per_token=0.0002 itl_base_s=0.008 itl_per_seq_s=0.0015 kv_blocks=576"
export SIM_PARAMS_ARGS="${SIM_PARAMS_ARGS:-$SIM block_size=16 max_num_seqs=48 max_model_len=8192}"
export POLICIES="${POLICIES:-modelyard:default,modelyard:precise,modelyard:round-robin,vllm-router:cache_aware}"
export NUM_REQUESTS="${NUM_REQUESTS:-384}" PRIME="${PRIME:-16}"
BASE="--prefix-groups 16 --prefix-len 2000 --prefix-conversations 8 --prefix-turns 3 --input-len 16 --output-len 16"
mkdir -p "$RESULTS"
case "$VARIANT" in
  base) export WORKLOAD_ARGS="--dataset shared-prefix $BASE --seed 1" ;;
  ru)
    RU=$(mktemp --suffix .jsonl); trap 'rm -f "$RU"' EXIT
    # shellcheck disable=SC2086
    $PY benchmarks/long_words_prefix.py "$RU" $BASE --seed 1
    export WORKLOAD_ARGS="--dataset jsonl --dataset-path $RU --output-len 16" ;;
  tenants)
    # SHARE|PRIME|ARGS: each tenant's conversations sized to its share of NUM_REQUESTS (3 turns a conversation)
    tenant() { local share=$1 groups=$2 seed=$3 convs
      convs=$($PY -c "import math; print(max(1, math.ceil($NUM_REQUESTS * $share / ($groups * 3))))")
      echo "$share|$groups|--dataset shared-prefix --prefix-groups $groups --prefix-len 2000 --prefix-conversations $convs --prefix-turns 3 --input-len 16 --output-len 16 --seed $seed"; }
    export PRIME=0 TENANTS="$(tenant 0.4 1 11);$(tenant 0.3 5 12);$(tenant 0.3 10 13)" ;;
  *) echo "VARIANT must be base, tenants or ru"; exit 2 ;;
esac
if [ -n "${TENANTS:-}" ]; then
  $PY benchmarks/prefix_ceiling.py --num-requests "$NUM_REQUESTS" --tenants "$TENANTS" > "$RESULTS/ceiling.json"
else
  # shellcheck disable=SC2086
  $PY benchmarks/prefix_ceiling.py --num-requests "$NUM_REQUESTS" --prime "$PRIME" -- $WORKLOAD_ARGS \
      > "$RESULTS/ceiling.json"
fi
echo "hit-rate ceiling: $(cat "$RESULTS/ceiling.json")"
benchmarks/routing_compare.sh "$RATES" "$RESULTS"
