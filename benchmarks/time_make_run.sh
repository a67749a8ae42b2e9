#!/usr/bin/env bash
# Times `make run` in a checkout (arg 1) from start to a served /health 200 and one chat answer on port arg 2,
# then stops it with SIGINT and checks that no llama-server is left. First run: MODELYARD_CACHE=<empty dir>.
cd "$1"
PORT=$2
export MODELYARD_API_KEY=measure-key
start=$(date +%s.%N)
setsid make run ARGS="--port $PORT" > run.log 2>&1 &
PID=$!
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
  sleep 0.5
  kill -0 $PID 2>/dev/null || { echo "make run died"; tail -20 run.log; exit 1; }
done
ready=$(date +%s.%N)
curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -H "Authorization: Bearer $MODELYARD_API_KEY" \
  -H "Content-Type: application/json" -d '{"model":"smollm2","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}' | head -c 300; echo
echo "make run -> serving: $(echo "$ready - $start" | bc) s"
kill -INT -- -$PID; wait $PID 2>/dev/null
sleep 1; pgrep -f "llama-server.*--port" >/dev/null && echo "LEFTOVER llama-server" || echo "no process left"
