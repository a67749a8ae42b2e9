from __future__ import annotations

from modelyard.spec.loader import SpecError, load_spec, parse_spec
from modelyard.spec.schema import LlamaCppModel, ModelSpec, OpenAIModel, SimulatorModel, YardSpec

__all__ = ["LlamaCppModel", "ModelSpec", "OpenAIModel", "SimulatorModel", "SpecError", "YardSpec", "load_spec",
           "parse_spec"]
