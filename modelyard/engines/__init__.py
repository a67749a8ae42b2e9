from __future__ import annotations

import importlib

from modelyard.engines.base import EngineAdapter, EngineError, LaunchPlan

# engine name -> "module:class"; chosen by name from yard.yaml, imported only when used
ENGINES = {
    "llamacpp": "modelyard.engines.llamacpp:LlamaCppEngine",
    "simulator": "modelyard.engines.simulator:SimulatorEngine",
    "openai": "modelyard.engines.openai:OpenAIEngine",
    "vllm": "modelyard.engines.vllm:VLLMEngine",
    "sglang": "modelyard.engines.sglang:SGLangEngine",
}


def get_engine(name: str) -> EngineAdapter:
    try:
        target = ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})") from None
    module_name, _, class_name = target.partition(":")
    engine: EngineAdapter = getattr(importlib.import_module(module_name), class_name)()
    return engine


__all__ = ["ENGINES", "EngineAdapter", "EngineError", "LaunchPlan", "get_engine"]
