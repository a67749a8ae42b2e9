from __future__ import annotations

import click

from modelyard.simulator.profiles import PROFILES, TASKS, override_names, resolve_profile


def parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        params[key.strip()] = value.strip()
    return params


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--model", "model_name", default="simulator", show_default=True, help="The served model name.")
@click.option("--profile", default="tiny-cpu", show_default=True, type=click.Choice(sorted(PROFILES)),
              help="The named latency/capacity profile.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help=f"Override a profile number (repeatable): {', '.join(override_names())}.")
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="What the model serves (the same as --param task=...; default: chat): chat and completions, "
                   "embeddings (and rerank, as an embedding model), or rerank (a cross-encoder).")
@click.option("--kv-events", "kv_events", default=None, metavar="ADDRESS",
              help="Publish KV cache events as vLLM does (ZMQ PUB, msgpack KVEventBatch) on this address, e.g. "
                   "tcp://127.0.0.1:5557; replays are served on --kv-events-replay.")
@click.option("--kv-events-replay", "kv_replay", default=None, metavar="ADDRESS",
              help="The replay (ROUTER) address; default: the --kv-events port + 1; 'none': no replay.")
@click.option("--kv-events-topic", "kv_topic", default="", show_default=True, help="The events' topic frame.")
@click.option("--role", type=click.Choice(["prefill", "decode"]), default=None,
              help="Play one role of prefill/decode disaggregation with vLLM's NIXL connector protocol: a prefill "
                   "replica answers a request with kv_transfer_params.do_remote_decode with the params a decode "
                   "replica fetches its KV cache by; a decode replica given them skips the prefill.")
@click.option("--tokenizer", "tokenizer_dir", default=None, metavar="DIR",
              help="The model's own tokenizer: a directory with tokenizer.json (and tokenizer_config.json with its "
                   "chat template); prompts are then tokenized as vLLM does (/tokenize, the prefix cache, KV events).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def simulate(host: str, port: int, model_name: str, profile: str, params: tuple[str, ...], task: str | None,
             kv_events: str | None, kv_replay: str | None, kv_topic: str, role: str | None, tokenizer_dir: str | None,
             log_level: str) -> None:
    """Run a simulated vLLM server (OpenAI API, vLLM metrics, sleep/wake) with a modelled latency, on CPU."""
    from modelyard.simulator.run import serve

    overrides = parse_params(params)
    if task is not None:
        if overrides.get("task", task) != task:
            raise click.BadParameter(f"--task {task} contradicts --param task={overrides['task']}",
                                     param_hint="--task")
        overrides["task"] = task
    try:
        resolved = resolve_profile(profile, overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from None
    events = None
    if kv_events is not None:
        from modelyard.simulator.kv_events import KVEventsConfig, default_replay

        replay = default_replay(kv_events) if kv_replay is None else None if kv_replay == "none" else kv_replay
        events = KVEventsConfig(endpoint=kv_events, replay_endpoint=replay, topic=kv_topic)
    tokenizer = None
    if tokenizer_dir is not None:
        from modelyard.local_tokenizer import LocalTokenizer, TokenizerError

        try:
            tokenizer = LocalTokenizer(tokenizer_dir)
        except TokenizerError as exc:
            raise click.BadParameter(str(exc), param_hint="--tokenizer") from None
    serve(resolved, model_name, host, port, log_level, events, role, tokenizer)
