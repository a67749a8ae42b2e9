# Helpers the benchmark scripts share; source it after setting PY (the Python to run modelyard with) and WORK
# (a temporary folder). Servers started with `track` are stopped with SIGINT, and WORK removed, on exit.
PIDS=()
port() { $PY -c "from modelyard.fleet.process import free_port; print(free_port())"; }
track() { PIDS+=("$1"); }
cleanup() { for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
wait_up() { for _ in $(seq 1 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done; echo "not up: $1"; exit 1; }
