from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


class TargetError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str
    api_key: str | None = None
    model: str = ""

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"


def parse_target(spec: str, default_key: str | None, env: dict[str, str] | None = None) -> Target:
    """`[NAME=]URL[@ENVVAR]`: URL is the OpenAI base (ending in /v1); the key comes from $ENVVAR if given."""
    env = dict(os.environ) if env is None else env
    name = ""
    rest = spec.strip()
    head, sep, tail = rest.partition("=")
    if sep and "://" not in head:
        name, rest = head, tail
    key = default_key
    url, at, var = rest.rpartition("@")
    if at and _ENV_NAME.match(var):
        if var not in env:
            raise TargetError(f"target {spec!r}: environment variable {var} is not set")
        key, rest = env[var], url
    parts = urlsplit(rest)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TargetError(f"target {spec!r}: expected [NAME=]http(s)://HOST:PORT/v1[@ENVVAR]")
    name = name or parts.netloc
    if not _TARGET_NAME.match(name):
        raise TargetError(f"target {spec!r}: name {name!r} may use only letters, digits, '_', '.', ':', '-'")
    return Target(name=name, base_url=rest.rstrip("/"), api_key=key)


def parse_targets(specs: tuple[str, ...], default_key: str | None, env: dict[str, str] | None = None) -> list[Target]:
    targets = [parse_target(s, default_key, env) for s in specs]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise TargetError(f"target names must differ: {names}")
    return targets


def parse_models(values: tuple[str, ...], targets: list[Target]) -> dict[str, str]:
    """`--model NAME` for every target, or `--model TARGET=NAME` for one."""
    names = {t.name for t in targets}
    chosen: dict[str, str] = {}
    for value in values:
        head, sep, tail = value.partition("=")
        if sep and head in names:
            chosen[head] = tail
        else:
            chosen.update({n: value for n in names if n not in chosen or chosen[n] == ""})
    return chosen
