from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "my-"


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
