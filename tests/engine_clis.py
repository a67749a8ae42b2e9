"""The real CLIs of vLLM and SGLang as recorded in tests/data (their option strings and the choices of a few), and
a stand-in for each that accepts exactly those options, logs its argv and environment, and serves the simulator:
`python -m tests.engine_clis vllm serve MODEL --port N ...` or `... sglang -m sglang.launch_server ...`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"
RECORDED = {"vllm": "vllm_serve", "sglang": "sglang_launch_server"}


def flags(engine: str) -> set[str]:
    lines = (DATA / f"{RECORDED[engine]}_flags.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def choices(engine: str) -> dict[str, set[str]]:
    """Option -> its allowed values, from the `[--option / -alias]` sections of the choices file."""
    out: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in (DATA / f"{RECORDED[engine]}_choices.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = set()
            for name in line.strip("[]").split("/"):
                out[name.strip()] = current
        elif line and not line.startswith("#") and current is not None:
            current.add(line)
    return out


def unknown_flags(engine: str, argv: list[str]) -> list[str]:
    known = flags(engine)
    return [a.split("=", 1)[0] for a in argv if a.startswith("-") and a.split("=", 1)[0] not in known
            and not a.lstrip("-").replace(".", "").isdigit()]


def options(argv: list[str]) -> dict[str, str]:
    """Each option with the value after it (the next token, unless that is another option)."""
    out: dict[str, str] = {}
    for index, token in enumerate(argv):
        if token.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else ""
            out[token] = "" if following.startswith("--") else following
    return out


def main(argv: list[str]) -> int:
    engine, rest = argv[0], argv[1:]
    if engine == "vllm":
        assert rest[0] == "serve", rest
        rest = rest[2:]  # `serve MODEL`
    else:
        assert rest[:2] == ["-m", "sglang.launch_server"], rest
        rest = rest[2:]
    bad = unknown_flags(engine, rest)
    if bad:
        print(f"{engine}: error: unrecognized arguments: {' '.join(bad)}", file=sys.stderr)
        return 2
    log = os.environ.get("ENGINE_CLI_LOG")
    if log:
        with open(log, "a") as out:
            out.write(json.dumps({"argv": argv, "env": {k: v for k, v in os.environ.items()
                                                        if k.startswith(("CUDA_", "HF_", "VLLM_", "TRANSFORMERS_"))}})
                      + "\n")
    opts = options(rest)
    name = opts.get("--served-model-name", "model")
    pooling = opts.get("--runner") == "pooling" or "--is-embedding" in opts
    seqs = opts.get("--max-num-seqs") or opts.get("--max-running-requests")
    from modelyard.simulator.profiles import resolve_profile
    from modelyard.simulator.run import serve

    params = {"itl_base_s": "0.001", "task": "embedding" if pooling else "chat"}
    if seqs:
        params["max_num_seqs"] = seqs
    serve(resolve_profile("tiny-cpu", params), name, opts["--host"], int(opts["--port"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
