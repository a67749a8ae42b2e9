from __future__ import annotations

import pytest

from modelyard import kv_hash

# computed with cbor2 (hashlib.sha256(cbor2.dumps(x, canonical=True))), as vLLM's sha256_cbor does
NONE_HASH_0 = "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e"
BLOCK_1 = "d830de3d42c00f25a2949b5d12d98642664a44872c1614c5b0147556276afc9c"  # tokens 0..15
BLOCK_2 = "d36f6c6fb9d31ddcf7699d8c86ea1fe3897ce82a35d6a9e87411bb38614a38b5"  # then 1000..1015


def test_the_chain_is_vllms_sha256_cbor() -> None:
    assert kv_hash.none_hash("0").hex() == NONE_HASH_0
    digests = kv_hash.chain([*range(16), *range(1000, 1016), 7, 7], 16, "0")
    assert [d.hex() for d in digests] == [BLOCK_1, BLOCK_2]  # the partial block is left out


def test_event_keys_are_the_low_64_bits() -> None:
    keys = kv_hash.block_keys([*range(16), *range(1000, 1016)], 16, "0")
    assert keys[1] == 8363671833828538549 == int(BLOCK_2, 16) & (2**64 - 1)
    assert kv_hash.block_keys(list(range(64)), 16, "0", limit=2) == kv_hash.block_keys(list(range(32)), 16, "0")


def test_the_seed_and_every_earlier_token_matter() -> None:
    tokens = list(range(48))
    base = kv_hash.block_keys(tokens, 16, "0")
    assert kv_hash.block_keys(tokens, 16, "1")[0] != base[0]
    changed = kv_hash.block_keys([99, *tokens[1:]], 16, "0")
    assert all(a != b for a, b in zip(base, changed, strict=True))


@pytest.mark.parametrize("token", [23, 24, 255, 256, 65535, 65536, 2**32])
def test_ints_of_every_length_encode(token: int) -> None:
    assert len(kv_hash.block_digest(kv_hash.none_hash("0"), [token] * 16)) == 32
