#!/usr/bin/env bash
# benchmarks/gateway_peers.sh on the device machine (16 cores, Python 3.12, no network): modelyard's dependencies
# and vllm-router travel as wheels in .whl/ (made by benchmarks/device_wheels.sh); LiteLLM does not fit
# the 64 MiB carry budget and is left out. The results come back as $OUT/gateway_peers-device.tgz.
# usage (device tool, carry [".whl"]): benchmarks/device_gateway_peers.sh [gateway_peers.sh arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
# .whl/src.tar.gz (optional): `git archive HEAD` of the commit to measure, so the run sees that commit, not a working tree
# that other work is changing; .whl/src.commit names it
if [ -f .whl/src.tar.gz ]; then
  mkdir -p /tmp/src && tar xzf .whl/src.tar.gz -C /tmp/src && cp -r .whl /tmp/src/ && cd /tmp/src
  echo "measuring commit $(cat .whl/src.commit 2>/dev/null)"
fi
if compgen -G ".whl/*.whl" >/dev/null; then  # none left after benchmarks/device_compact.sh: all in the tarball below
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
tar xJf .whl/vllm_router.tar.xz -C /tmp/site
mkdir -p /tmp/site/bin
printf '#!/usr/bin/env python3\nfrom vllm_router.launch_router import main\nmain()\n' > /tmp/site/bin/vllm-router
chmod +x /tmp/site/bin/vllm-router
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nproc; python3 --version
RES=/tmp/gateway_peers-device-$(date +%Y%m%d-%H%M%S)
rc=0
# bounded below the device tool's 10-minute limit, so that what was measured still comes back
PY=python3 VLLM_ROUTER=/tmp/site/bin/vllm-router PYSPY=${PYSPY-/tmp/site/bin/py-spy} timeout --signal=INT "${DEVICE_LIMIT_S:-560}" \
    benchmarks/gateway_peers.sh --no-litellm --out "$RES" "$@" || rc=$?
tar czf "${OUT:-/tmp}/gateway_peers-device.tgz" -C "$(dirname "$RES")" "$(basename "$RES")"
exit $rc
