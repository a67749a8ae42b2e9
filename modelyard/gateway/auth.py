from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

KEY_PREFIX = "my-"
API_KEY_ENV = "MODELYARD_API_KEY"  # a static key for `modelyard up`, beside yard.yaml's
CACHE_SALT_CONTEXT = b"modelyard-cache-salt-v1:"


class Twice:
    """A request with more than one Authorization header: refused (400) on every route, never read by the first or
    the last one (a proxy in front that checks one of them would disagree with us about who is calling)."""


TWICE: Final = Twice()


def authorization(headers: Iterable[tuple[bytes, bytes]]) -> str | Twice | None:
    """The Authorization header of an ASGI scope's headers: None when there is none, TWICE when there are several."""
    found: str | Twice | None = None
    for name, value in headers:
        if name == b"authorization":
            if found is not None:
                return TWICE
            found = value.decode("latin-1")
    return found


def cache_salt(principal: str) -> str:
    """The prefix-cache salt of a key (engines that take one, vLLM's `cache_salt`): a stable hash of its name, never
    of its secret, the same in every gateway worker and across restarts. The gateway sets it on every request of the
    key (a client's own is replaced), so a tenant's prompts cannot be probed through another's cache hits."""
    return hashlib.sha256(CACHE_SALT_CONTEXT + principal.encode()).hexdigest()[:32]


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Credentials:
    """The operator's keys that open one kind of route (/admin: the admin key; /metrics: it or the metrics key; /ui:
    it or the ui key): kept as their sha256, a secret compared in constant time against each. API keys are not
    these: they are the store's and the ring's (gateway/tenancy.py)."""

    def __init__(self, keys: Iterable[str | None]) -> None:
        self.hashes = tuple(sorted({hash_key(k) for k in keys if k}))

    @property
    def enabled(self) -> bool:
        return bool(self.hashes)

    def key_ok(self, secret: str | None) -> bool:
        if not secret or not self.hashes:
            return False
        digest = hash_key(secret)
        matched = False
        for known in self.hashes:
            matched |= hmac.compare_digest(known, digest)
        return matched

    def bearer_ok(self, authorization: str | None) -> bool:
        return self.key_ok(bearer(authorization))


@dataclass(frozen=True)
class Principal:
    """Who made a request: the key's name, never its secret."""

    name: str


class KeyRing:
    """API keys known by the sha256 of their secret; the secret itself is never kept."""

    def __init__(self, hashed: dict[str, str] | None = None) -> None:
        self._by_hash: dict[str, Principal] = {h: Principal(name) for h, name in (hashed or {}).items()}

    def add_hash(self, name: str, sha256_hex: str) -> None:
        self._by_hash[sha256_hex] = Principal(name)

    def add_secret(self, name: str, secret: str) -> None:
        self.add_hash(name, hash_key(secret))

    def __len__(self) -> int:
        return len(self._by_hash)

    def hashed(self) -> dict[str, str]:
        """sha256 -> name, what `KeyRing(hashed)` takes: the ring without any secret, for another process."""
        return {digest: principal.name for digest, principal in self._by_hash.items()}

    def authenticate(self, authorization: str | None) -> Principal | None:
        token = bearer(authorization)
        return self.find(hash_key(token)) if token is not None else None

    def find(self, digest: str) -> Principal | None:
        """The key whose secret hashes to `digest`, compared in constant time."""
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None
