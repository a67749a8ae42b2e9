"""How vLLM names a KV block, so that a router's keys equal the engine's KV events' keys.

vLLM (`vllm/v1/core/kv_cache_utils.py`) hashes each full block of `block_size` token ids with its parent's hash:
`hash_fn((parent_hash, tuple(block_token_ids), extra_keys))`, the first block's parent being NONE_HASH =
`hash_fn(PYTHONHASHSEED)`. With `--prefix-caching-hash-algo sha256_cbor`, hash_fn is SHA-256 of the canonical CBOR
encoding (cbor2.dumps(..., canonical=True)), reproducible across processes and languages once PYTHONHASHSEED is
set. Its KV events carry each hash as an int, the digest's low 64 bits (`maybe_convert_block_hash`, with
VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1, the default). Extra keys (LoRA, multimodal, cache salt) are not modelled:
plain text prompts have none (None in the tuple).

The CBOR here is the few shapes that tuple needs (an array, a byte string, unsigned ints, null, a text string),
canonical: every length and int in its shortest form.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

ALGO = "sha256_cbor"
_NULL = b"\xf6"
_MASK = (1 << 64) - 1


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes((major | 26,)) + struct.pack(">I", n)
    return bytes((major | 27,)) + struct.pack(">Q", n)


class _Encodings(dict[int, bytes]):
    """Each token id's CBOR encoding, made once (a vocabulary is bounded: at most its size of entries)."""

    def __missing__(self, token: int) -> bytes:
        if token < 0:
            raise ValueError("token ids are unsigned")
        encoded = self[token] = _head(0x00, token)
        return encoded


def none_hash(seed: str) -> bytes:
    """NONE_HASH: the hash of the seed (vLLM's PYTHONHASHSEED) as a CBOR text string."""
    raw = seed.encode()
    return hashlib.sha256(_head(0x60, len(raw)) + raw).digest()


def external(digest: bytes) -> int:
    """The hash as the KV events carry it: the digest as a big-endian int, masked to 64 bits."""
    return int.from_bytes(digest, "big") & _MASK


class BlockHasher:
    """vLLM's block chain for one seed; keeps the token ids' encodings, so a block costs a join and a SHA-256."""

    def __init__(self, seed: str = "0") -> None:
        self.seed = seed
        self.root = none_hash(seed)
        self._encoded = _Encodings()

    def digest(self, parent: bytes, tokens: Sequence[int]) -> bytes:
        """sha256_cbor((parent, tuple(tokens), None))."""
        body = b"".join(map(self._encoded.__getitem__, tokens))
        return hashlib.sha256(b"\x83" + _head(0x40, len(parent)) + parent + _head(0x80, len(tokens)) + body
                              + _NULL).digest()

    def chain(self, tokens: Sequence[int], block_size: int, limit: int | None = None) -> list[bytes]:
        """The digests of the full blocks of `tokens` (at most `limit`), each chained to the one before."""
        count = len(tokens) // block_size
        if limit is not None:
            count = min(count, limit)
        parent = self.root
        out = []
        digest = self.digest
        for start in range(0, count * block_size, block_size):
            parent = digest(parent, tokens[start:start + block_size])
            out.append(parent)
        return out

    def keys(self, tokens: Sequence[int], block_size: int, limit: int | None = None) -> tuple[int, ...]:
        """The events' keys of the prompt's full blocks: what a router looks up in a KV-event index."""
        return tuple(int.from_bytes(d[-8:], "big") for d in self.chain(tokens, block_size, limit))


def block_digest(parent: bytes, tokens: Sequence[int]) -> bytes:
    return BlockHasher().digest(parent, tokens)


def chain(tokens: Sequence[int], block_size: int, seed: str, limit: int | None = None) -> list[bytes]:
    return BlockHasher(seed).chain(tokens, block_size, limit)


def block_keys(tokens: Sequence[int], block_size: int, seed: str, limit: int | None = None) -> tuple[int, ...]:
    return BlockHasher(seed).keys(tokens, block_size, limit)
