#!/usr/bin/env bash
# benchmarks/routing_proof.sh's three variants and benchmarks/routing_decision.py on the device machine (16 cores,
# Python 3.12, no network), in one call of the device tool, each bounded so that what was measured comes back as
# $OUT/<variant>.tgz. What travels in .whl/ (git-ignored): modelyard's runtime wheels and vllm-router
# (benchmarks/device_wheels.sh), msgspec and pyzmq in .whl/place/, and .whl/place/src.tar.gz, a `git archive` of
# the commit to measure (.whl/place/src.commit names it).
# usage (device tool, carry [".whl"]): bash .whl/place/device_routing_proof.sh
#   env: BASE_RATES (default 30,60,90,120), VARIANT_RATES (tenants and ru, default 40,80), the limits BASE_S,
#        VARIANT_S (seconds per variant, default 250 and 110); to try it elsewhere at a tiny scale: SKIP_INSTALL=1
#        PY=.venv/bin/python PEER_VENV=... OUT=/tmp/x NUM_REQUESTS=32 BASE_RATES=8 ...
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
rm -rf /tmp/src && mkdir -p /tmp/src && tar xzf .whl/place/src.tar.gz -C /tmp/src
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl .whl/place/*.whl || exit 1
  tar xJf .whl/vllm_router.tar.xz -C /tmp/site
  mkdir -p /tmp/site/bin
  printf '#!/usr/bin/env python3\nfrom vllm_router.launch_router import main\nmain()\n' > /tmp/site/bin/vllm-router
  chmod +x /tmp/site/bin/vllm-router
  export PYTHONPATH="/tmp/site:/tmp/src"
else
  export PYTHONPATH=/tmp/src
fi
export PYTHONUNBUFFERED=1 PY="${PY:-python3}" PEER_VENV="${PEER_VENV:-/tmp/site}" OUT="${OUT:-/tmp}"
export COMMIT; COMMIT=$(cat "$root/.whl/place/src.commit")
case "$PY" in /*) ;; */*) PY="$root/$PY" ;; esac
cd /tmp/src
echo "measuring commit $COMMIT on $(nproc) cores, $(python3 --version)"
"$PY" benchmarks/routing_decision.py --replicas 64 --requests "${DECISIONS:-5000}" --out "$OUT/decision-head.json"
"$PY" benchmarks/routing_decision.py --replicas 64 --requests "${DECISIONS:-5000}" --whole-keys \
    --out "$OUT/decision-whole.json"
run() {  # VARIANT RATES LIMIT_S POLICIES
  local res=/tmp/results/routing_proof-$1-device
  mkdir -p /tmp/results
  POLICIES=$4 DRAIN_S=15 POLICY_RATES="modelyard:round-robin=30" timeout --signal=INT "$3" \
      benchmarks/routing_proof.sh "$1" "$2" "$res"
  echo "=== $1: rc $? ==="
  tar czf "$OUT/$1.tgz" -C /tmp/results "$(basename "$res")"
}
ALL=modelyard:default,modelyard:precise,vllm-router:cache_aware
run base "${BASE_RATES:-30,60,90,120}" "${BASE_S:-250}" "$ALL,modelyard:round-robin"
run tenants "${VARIANT_RATES:-40,80}" "${VARIANT_S:-110}" "$ALL"
run ru "${VARIANT_RATES:-40,80}" "${VARIANT_S:-110}" "$ALL"
