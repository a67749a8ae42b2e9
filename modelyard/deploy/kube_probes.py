"""The engine containers' probes and preStop hook, as small Python scripts run with the image's own `python3` (an
HTTP probe can only GET), or, in an image without Python (the adapter's `probe_tool`: llama.cpp's), with curl.

Readiness asks for one real token (or one embedding, one rerank) with the adapter's own probe bodies
(engines/base.py PROBES): a `/health` that answers while the engine cannot generate does not make a replica ready.
The preStop hook waits for the engine's running and waiting requests (the adapter's metric names) to reach zero,
so streams finish before SIGTERM."""

from __future__ import annotations

import json
import math

from modelyard.deploy.kube_common import ENGINE_PORT, ENGINE_PORT_NAME, Manifest
from modelyard.engines.base import ABSENT, PROBE_TIMEOUT_S, PROBES, EngineAdapter
from modelyard.spec.schema import BaseModelSpec

# argv: base url, timeout, the key a real answer has, [[path, body], ...] tried in order (the next only when the
# server lacks the path); exit 0 only for a 200 with a real result
READY_SCRIPT = """\
import json, sys, urllib.error, urllib.request
base, timeout, key = sys.argv[1], float(sys.argv[2]), sys.argv[3]
for path, body in json.loads(sys.argv[4]):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        if error.code in json.loads(sys.argv[5]):
            continue
        sys.exit(f"{path} answered {error.code}")
    real = (isinstance(answer, list) and answer) or (isinstance(answer, dict) and answer.get(key))
    sys.exit(0 if real else f"{path} answered without a result")
sys.exit("no probe path answered")
"""

# argv: base url, comma-separated metric names (running, waiting), most seconds to wait
DRAIN_SCRIPT = """\
import sys, time, urllib.request
base, names, limit = sys.argv[1], set(sys.argv[2].split(",")) - {""}, float(sys.argv[3])
time.sleep(5)
end = time.monotonic() + limit
while names and time.monotonic() < end:
    try:
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    except OSError:
        break
    busy = sum(float(line.rsplit(" ", 1)[-1]) for line in text.splitlines()
               if line.split("{", 1)[0].split(" ", 1)[0] in names)
    if busy == 0:
        break
    time.sleep(2)
"""

ANSWER_KEYS = {"chat": "choices", "embedding": "data", "rerank": "results"}
LOCAL = f"http://127.0.0.1:{ENGINE_PORT}"
PERIOD_S = 10
DRAIN_MARGIN_S = 30  # after the drain: the engine's own shutdown
MIN_STARTUP_S = {True: 600.0, False: 120.0}  # a GPU engine loads for minutes (weights, compile, CUDA graphs)


def readiness(adapter: EngineAdapter, model: BaseModelSpec) -> Manifest:
    task = adapter.task(model)
    served = adapter.upstream_model(model) or model.name
    attempts = [[path, {"model": served, **body}] for _, path, body in PROBES[task]]
    if adapter.probe_tool == "curl":  # the first probe path, which the engine serves: a 2xx with a body
        path, body = attempts[0]
        command = ["curl", "-sSf", "-m", str(int(PROBE_TIMEOUT_S)), "-H", "Content-Type: application/json",
                   "-d", json.dumps(body, separators=(",", ":")), "-o", "/dev/null", LOCAL + str(path)]
    else:
        command = ["python3", "-c", READY_SCRIPT, LOCAL, str(PROBE_TIMEOUT_S), ANSWER_KEYS[task.value],
                   json.dumps(attempts, separators=(",", ":")), json.dumps(sorted(ABSENT))]
    return {"exec": {"command": command}, "periodSeconds": 20, "timeoutSeconds": int(PROBE_TIMEOUT_S) + 5,
            "failureThreshold": 3, "successThreshold": 1}


def _cheap_check(adapter: EngineAdapter) -> Manifest:
    if adapter.health_path:
        return {"httpGet": {"path": adapter.health_path, "port": ENGINE_PORT_NAME}}
    return {"tcpSocket": {"port": ENGINE_PORT_NAME}}


def startup(adapter: EngineAdapter, model: BaseModelSpec, gpu: bool) -> Manifest:
    budget = max(model.startup_timeout_s, MIN_STARTUP_S[gpu])
    return {**_cheap_check(adapter), "periodSeconds": PERIOD_S, "timeoutSeconds": 5,
            "failureThreshold": math.ceil(budget / PERIOD_S)}


def liveness(adapter: EngineAdapter) -> Manifest:
    return {**_cheap_check(adapter), "periodSeconds": PERIOD_S, "timeoutSeconds": 5, "failureThreshold": 6}


def drain_seconds(model: BaseModelSpec) -> int:
    return math.ceil(model.timeouts.total_s)


def grace_seconds(model: BaseModelSpec) -> int:
    """Long enough for the longest request the gateway lets run (timeouts.total_s), the endpoint removal's 5 s,
    then the engine's own shutdown."""
    return drain_seconds(model) + 5 + DRAIN_MARGIN_S


def pre_stop(adapter: EngineAdapter, model: BaseModelSpec) -> Manifest:
    names = [n.decode() for n in (*adapter.metrics.running[:1], *adapter.metrics.waiting[:1])]
    if adapter.probe_tool == "curl":  # the same wait, in sh: while a named gauge is above zero
        pattern = "|".join(names) or "none"
        script = (f"sleep 5; end=$(($(date +%s)+{drain_seconds(model)})); "
                  f"while [ $(date +%s) -lt $end ] && curl -s {LOCAL}/metrics | "
                  f"grep -E '^({pattern})(\\{{[^}}]*\\}})? [0-9.]*[1-9]' >/dev/null; do sleep 2; done")
        return {"exec": {"command": ["sh", "-c", script]}}
    command = ["python3", "-c", DRAIN_SCRIPT, LOCAL, ",".join(names), str(drain_seconds(model))]
    return {"exec": {"command": command}}
