"""What the GPU engines (vLLM, SGLang) share: weights from a local path or a local hub cache (never a download),
the GPUs each replica takes, and the context-stretching override."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

from modelyard.engines.base import EngineAdapter, EngineError, LaunchPlan, Resources, Task
from modelyard.spec.schema import AcceleratorModel, BaseModelSpec, WeightsSource

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # the engine never reaches a hub either
CONTAINER_HUB_CACHE = "/models/hub"  # in a container: a `name:` model without cache_dir reads the hub cache here


def hub_cache(model: AcceleratorModel) -> Path:
    if model.model.cache_dir:
        return Path(model.model.cache_dir).expanduser()
    if env := os.environ.get("HF_HUB_CACHE"):
        return Path(env)
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def weights(model: AcceleratorModel, check: bool) -> tuple[str, dict[str, str]]:
    """The engine's model argument and the environment that lets it load the weights offline."""
    source = model.model
    if source.path is not None:
        path = Path(source.path).expanduser()
        if check and not path.exists():
            raise EngineError(f"model path {path} does not exist")
        return str(path), dict(OFFLINE_ENV)
    assert source.name is not None
    cache = hub_cache(model)
    if check:
        snapshots = cache / f"models--{source.name.replace('/', '--')}" / "snapshots"
        if not snapshots.is_dir() or not any(snapshots.iterdir()):
            raise EngineError(f"{source.name} is not in the hub cache {cache} (modelyard never downloads weights: "
                              "put them there beforehand, e.g. `huggingface-cli download` on a machine that may)")
    return source.name, {**OFFLINE_ENV, "HF_HUB_CACHE": str(cache)}


def replica_gpus(model: AcceleratorModel, replica: int) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for one replica: its own group of tensor_parallel x pipeline_parallel GPUs."""
    if not model.gpus:
        return {}
    size = model.gpus_per_replica
    group = model.gpus[replica * size:(replica + 1) * size]
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, group))}


def check_gpus(model: AcceleratorModel) -> None:
    """The listed GPUs exist on this machine (when nvidia-smi can tell)."""
    if not model.gpus or shutil.which("nvidia-smi") is None:
        return
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return
    count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    missing = sorted(g for g in model.gpus if g >= count)
    if missing:
        raise EngineError(f"gpus {missing} do not exist: this machine has {count} GPU(s)")


def weights_config(model: AcceleratorModel) -> dict[str, Any]:
    """The weights' config.json, when it is on this machine (a path, or the newest snapshot in the hub cache)."""
    source = model.model
    if source.path is not None:
        candidates = [Path(source.path).expanduser() / "config.json"]
    else:
        assert source.name is not None
        snapshots = hub_cache(model) / f"models--{source.name.replace('/', '--')}" / "snapshots"
        candidates = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        try:
            config = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            return config
    return {}


def rope_override(model: AcceleratorModel, key: str) -> dict[str, Any] | None:
    """The model-config override that stretches the context: the rope settings under `key` (vLLM 0.33 reads
    `rope_parameters`, SGLang `rope_scaling`) with `rope_type`, and `max_position_embeddings` raised to match."""
    rope = model.rope_scaling
    if rope is None:
        return None
    settings: dict[str, Any] = {"rope_type": rope.type, "factor": rope.factor,
                                "original_max_position_embeddings": rope.original_max_position_embeddings}
    config = weights_config(model)
    theta = rope.rope_theta or config.get("rope_theta") or (config.get(key) or {}).get("rope_theta")
    if theta:
        settings["rope_theta"] = theta
    positions = model.max_context or int(rope.factor * rope.original_max_position_embeddings)
    return {key: settings, "max_position_embeddings": positions}


def find_binary(model: AcceleratorModel, default: str) -> str:
    binary = model.binary or default
    if shutil.which(binary) is None and not (Path(binary).is_file() and os.access(binary, os.X_OK)):
        raise EngineError(f"{binary!r} not found (install the engine, or set the model's `binary:`)")
    return binary


def replica_resources(model: AcceleratorModel) -> Resources:
    """A GPU engine's replica: its tensor_parallel x pipeline_parallel GPUs, one CPU to drive them."""
    return Resources(cpus=1.0, memory_gib=model.memory_gib or 0.0, gpus=model.gpus_per_replica)


class AcceleratorEngine(EngineAdapter):
    """What the GPU engines' adapters share: slots from max_num_seqs, GPUs as resources, the served name, the
    checks before a launch, sleep only with sleep_mode."""

    command: ClassVar[str]  # the engine's command when the spec gives no `binary`
    tasks = frozenset(Task)
    default_slots = 256
    inherited_env: ClassVar[tuple[str, ...]] = (
        "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "TORCH_", "TRITON_", "OMP_NUM_THREADS")

    def _model(self, model: BaseModelSpec) -> AcceleratorModel:
        assert isinstance(model, AcceleratorModel)
        return model

    def slots(self, model: BaseModelSpec) -> int:
        return self._model(model).max_num_seqs or self.default_slots

    def resources(self, model: BaseModelSpec) -> Resources:
        return replica_resources(self._model(model))

    def upstream_model(self, model: BaseModelSpec) -> str | None:
        return self._model(model).served_model_name

    def prepare(self, model: BaseModelSpec) -> None:
        accelerated = self._model(model)
        find_binary(accelerated, self.command)
        weights(accelerated, check=True)
        check_gpus(accelerated)

    def can_sleep(self, model: BaseModelSpec) -> bool:
        return self._model(model).sleep_mode

    def tokenizer_dir(self, model: BaseModelSpec) -> Path | None:
        """`tokenizer_path`, else the weights directory (a hub model's snapshot: the one refs/main names)."""
        accelerated = self._model(model)
        if accelerated.tokenizer != "local" or accelerated.tokenizer_path is not None:
            return super().tokenizer_dir(model)
        source = accelerated.model
        if source.path is not None:
            return Path(source.path).expanduser()
        assert source.name is not None
        repo = hub_cache(accelerated) / f"models--{source.name.replace('/', '--')}"
        ref = repo / "refs" / "main"
        if ref.is_file():
            return repo / "snapshots" / ref.read_text().strip()
        snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
        return snapshots[-1] if snapshots else repo / "snapshots"

    def container_launch(self, model: BaseModelSpec, host: str, port: int) -> LaunchPlan:
        """A pod's: the weights from the mounted volume (a hub model without cache_dir from CONTAINER_HUB_CACHE, not
        this machine's $HF_HUB_CACHE), its GPUs the nvidia.com/gpu it was given (no CUDA_VISIBLE_DEVICES)."""
        accelerated = self._model(model)
        source = accelerated.model
        if source.name is not None and source.cache_dir is None:
            source = WeightsSource(name=source.name, cache_dir=CONTAINER_HUB_CACHE)
            accelerated = accelerated.model_copy(update={"model": source})
        plan = self.launch(accelerated, host, port, replica=0)
        assert plan is not None
        paths = [source.path or source.cache_dir or CONTAINER_HUB_CACHE, *(a.path for a in accelerated.lora)]
        return LaunchPlan(argv=plan.argv, env={k: v for k, v in plan.env.items() if k != "CUDA_VISIBLE_DEVICES"},
                          mounts=tuple(dict.fromkeys(p.rstrip("/") or "/" for p in paths)))
