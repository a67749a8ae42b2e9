#!/usr/bin/env bash
# The reliability campaign, long: the chaos and API fuzz tests (tests/e2e/test_chaos.py, tests/e2e/test_api_fuzz.py)
# at --scale times their CI size (more generated requests per route, more streams per fault, a larger rpm), plus
# the yard.yaml loader's hypothesis tests with --scale times their examples. Each test writes its figures as JSON
# to the results folder; benchmarks/chaos_report.py turns them into docs/reliability.md's table (between its
# markers) and table.md in the folder. The tests' xfail marks (what needs other branches) are run, not skipped.
# usage: benchmarks/chaos.sh [--scale 5] [--out DIR] [--no-docs]
# env: PY (python with modelyard, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=5; OUTDIR=""; DOCS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) SCALE=$2; shift 2;; --out) OUTDIR=$2; shift 2;; --no-docs) DOCS=0; shift;;
    *) echo "unknown argument $1"; exit 2;;
  esac
done
PY="${PY:-.venv/bin/python}"
RESULTS="${OUTDIR:-benchmarks/results/chaos-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$RESULTS"
COMMAND="benchmarks/chaos.sh --scale $SCALE"
echo "$COMMAND at $(git rev-parse --short HEAD) on $(nproc) cores" | tee "$RESULTS/setup.txt"
START=$(date +%s)
status=0
MODELYARD_CAMPAIGN_SCALE=$SCALE MODELYARD_CAMPAIGN_OUT="$RESULTS" PYTHONPATH="$PWD" \
  "$PY" -m pytest -p no:cacheprovider -q -rxXf --timeout 3000 \
  tests/e2e/test_api_fuzz.py tests/e2e/test_chaos.py tests/spec/test_loader_fuzz.py \
  2>&1 | tee "$RESULTS/pytest.txt" || status=$?
echo "seconds: $(( $(date +%s) - START ))" | tee -a "$RESULTS/setup.txt"
ARGS=("$RESULTS" --command "$COMMAND")
[ "$DOCS" = 1 ] && ARGS+=(--docs docs/reliability.md)
"$PY" benchmarks/chaos_report.py "${ARGS[@]}"
exit $status
