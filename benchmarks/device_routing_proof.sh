#!/usr/bin/env bash
# benchmarks/routing_proof.sh's three variants and benchmarks/routing_decision.py on the device machine (16 cores,
# Python 3.12, no network), in one call of the device tool, each bounded so that what was measured comes back as
# $OUT/<variant>.tgz. What travels in .whl/ (git-ignored): modelyard's runtime wheels and vllm-router
# (benchmarks/device_wheels.sh), msgspec and pyzmq in .whl/place/, and .whl/place/src.tar.gz, a `git archive` of
# the commit to measure (.whl/place/src.commit names it).
# usage (device tool, carry [".whl"]): bash .whl/place/device_routing_proof.sh
#   env: per variant (BASE_, TENANT_, RU_) its RATES, POLICIES and its limit in seconds (_S; 230, 130, 100); to try
#        it elsewhere at a tiny scale: SKIP_INSTALL=1 PY=.venv/bin/python PEER_VENV=... OUT=/tmp/x NUM_REQUESTS=32 ...
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
SRC=${SRC:-/tmp/src}; TMP_RESULTS=${TMP_RESULTS:-/tmp/results}
rm -rf "$SRC" && mkdir -p "$SRC" && tar xzf .whl/place/src.tar.gz -C "$SRC"
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl .whl/place/*.whl || exit 1
  tar xJf .whl/vllm_router.tar.xz -C /tmp/site
  mkdir -p /tmp/site/bin
  printf '#!/usr/bin/env python3\nfrom vllm_router.launch_router import main\nmain()\n' > /tmp/site/bin/vllm-router
  chmod +x /tmp/site/bin/vllm-router
  export PYTHONPATH="/tmp/site:$SRC"
else
  export PYTHONPATH=$SRC
fi
export PYTHONUNBUFFERED=1 PY="${PY:-python3}" PEER_VENV="${PEER_VENV:-/tmp/site}" OUT="${OUT:-/tmp}"
export COMMIT; COMMIT=$(cat "$root/.whl/place/src.commit")
case "$PY" in /*) ;; */*) PY="$root/$PY" ;; esac
cd "$SRC"
echo "measuring commit $COMMIT on $(nproc) cores, $(python3 --version)"
"$PY" benchmarks/routing_decision.py --replicas 64 --requests "${DECISIONS:-5000}" --out "$OUT/decision-head.json"
"$PY" benchmarks/routing_decision.py --replicas 64 --requests "${DECISIONS:-5000}" --whole-keys \
    --out "$OUT/decision-whole.json"
run() {  # VARIANT RATES LIMIT_S POLICIES
  local res=$TMP_RESULTS/routing_proof-$1-device
  rm -rf "$res"; mkdir -p "$TMP_RESULTS"
  POLICIES=$4 DRAIN_S=15 POLICY_RATES="${POLICY_RATES:-modelyard:round-robin=30}" timeout --signal=INT "$3" \
      benchmarks/routing_proof.sh "$1" "$2" "$res"
  echo "=== $1: rc $? ==="
  tar czf "$OUT/$1.tgz" -C "$TMP_RESULTS" "$(basename "$res")"
}
ALL=modelyard:default,modelyard:precise,vllm-router:cache_aware
run base "${BASE_RATES:-30,60,90,120,150}" "${BASE_S:-230}" "${BASE_POLICIES:-$ALL,modelyard:round-robin}"
run tenants "${TENANT_RATES:-40,80}" "${TENANT_S:-130}" "${TENANT_POLICIES:-$ALL,modelyard:precise-spill}"
run ru "${RU_RATES:-40,80}" "${RU_S:-100}" "${RU_POLICIES:-$ALL}"
