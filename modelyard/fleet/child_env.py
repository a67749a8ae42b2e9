"""The environment of the processes that `modelyard up` starts (engine replicas, the private redis-server, the
gateway workers): named,
never inherited whole. `up` runs with the gateway's secrets in its environment ($MODELYARD_API_KEY, the admin key,
the keys' `key_env`, the external servers' `api_key_env`); a child gets the variables that any program needs
(`BASE`), the accelerators' (`ACCELERATOR`), what its engine says it reads (`EngineAdapter.inherited_env`), its own
model's secrets (`secret_env`) and its launch plan's, and never a variable that the spec names as a secret of
anything else. A gateway worker gets `BASE` and `GATEWAY_WORKER`, no secret at all: its keys come as hashes and the
admin key over its stdin (`worker_env`)."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping

from modelyard.engines import EngineAdapter, LaunchPlan, get_engine
from modelyard.gateway.auth import API_KEY_ENV
from modelyard.spec.schema import BaseModelSpec, YardSpec

# a name ending in "_" is a prefix
BASE = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_", "TZ", "TERM", "TMPDIR", "TMP", "TEMP",
        "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "SSL_CERT_FILE",
        "SSL_CERT_DIR")
ACCELERATOR = ("CUDA_", "NVIDIA_", "NCCL_", "HIP_", "ROCR_", "HSA_", "ROCM_")
# a gateway worker: our own settings (MODELYARD_GC, MODELYARD_EAGER; the keys among them are withheld as secrets),
# Python's, and what the PostgreSQL store's client (asyncpg) reads when the store's url leaves it out
GATEWAY_WORKER = ("MODELYARD_", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS",
                  "PYTHONDEVMODE", "PYTHONASYNCIODEBUG", "PYTHONFAULTHANDLER", "PGHOST", "PGPORT", "PGUSER",
                  "PGPASSWORD", "PGPASSFILE", "PGDATABASE", "PGSSLMODE", "PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT",
                  "PGSSLCRL", "PGTARGETSESSIONATTRS", "PGSERVICE", "PGSERVICEFILE")


def child_env(own: Mapping[str, str] | None = None, inherit: Iterable[str] = (), withheld: Collection[str] = (),
              source: Mapping[str, str] | None = None) -> dict[str, str]:
    """`BASE` and `inherit` (names, or prefixes ending in "_") taken from `source` (our environment), less
    `withheld`, then `own` on top: the whole environment of a child."""
    names = (*BASE, *inherit)
    exact = frozenset(n for n in names if not n.endswith("_"))
    prefixes = tuple(n for n in names if n.endswith("_"))
    env = {k: v for k, v in (os.environ if source is None else source).items()
           if (k in exact or k.startswith(prefixes)) and k not in withheld}
    env.update(own or {})
    return env


def secret_names(spec: YardSpec) -> frozenset[str]:
    """The environment variables that hold a secret according to the spec: the gateway's keys, the admin, ui and
    metrics keys, each model's own (`secret_env`, an external server's `api_key_env`)."""
    gateway = spec.gateway
    return frozenset({API_KEY_ENV, gateway.admin_key_env,
                      *(n for n in (gateway.ui_key_env, gateway.metrics_key_env) if n),
                      *(k.key_env for k in gateway.keys if k.key_env),
                      *(name for m in spec.models for name in get_engine(m.engine).secret_env(m))})


def replica_env(engine: EngineAdapter, model: BaseModelSpec, plan: LaunchPlan,
                withheld: Collection[str] = (), source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of one replica of `model`: the one place where it is made."""
    own = engine.secret_env(model)
    return child_env(plan.env, (*ACCELERATOR, *engine.inherited_env, *own),
                     frozenset(withheld) - frozenset(own), source)


def worker_env(spec: YardSpec, own: Mapping[str, str], source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a gateway worker."""
    return child_env(own, GATEWAY_WORKER, secret_names(spec), source)
