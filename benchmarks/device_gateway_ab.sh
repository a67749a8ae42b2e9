#!/usr/bin/env bash
# Several commits (or settings) through benchmarks/device_gateway_peers.sh in one device call, one after the other,
# each against vllm-router in its own run (only ratios within a run are compared). Each variant is a tarball made
# with `git archive` (as benchmarks/device_wheels.sh makes .whl/src.tar.gz) and optional environment settings.
# usage (device tool, carry [".whl"]; the script travels in .whl/ too):
#   bash .whl/device_gateway_ab.sh "NAME=TARBALL[:ENV=VALUE,...]" ... -- [gateway_peers.sh arguments]
#   e.g. bash .whl/device_gateway_ab.sh main=.whl/src-main.tar.gz branch=.whl/src-branch.tar.gz \
#        branch-lazy=.whl/src-branch.tar.gz:MODELYARD_EAGER=0 -- --levels 256,1024 --duration 15
# Each variant's results come back as $OUT/NAME.tgz; RUN_LIMIT_S (default 170) bounds each run.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do variants+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
for variant in "${variants[@]}"; do
  name=${variant%%=*}; rest=${variant#*=}; tarball=${rest%%:*}; settings=""
  [ "$rest" != "$tarball" ] && settings=${rest#*:}
  echo "=== $name: $tarball ${settings:+($settings)} ==="
  rm -rf /tmp/src /tmp/site
  cp "$tarball" .whl/src.tar.gz
  echo "$name" > .whl/src.commit
  (
    IFS=, read -ra pairs <<< "$settings"
    for pair in "${pairs[@]}"; do export "${pair?}"; done
    DEVICE_LIMIT_S=${RUN_LIMIT_S:-170} PYSPY="" bash "$root/benchmarks/device_gateway_peers.sh" "$@"
  )
  echo "=== $name: rc $? ==="
  mv "${OUT:-/tmp}/gateway_peers-device.tgz" "${OUT:-/tmp}/$name.tgz" 2>/dev/null
  cd "$root"
done
