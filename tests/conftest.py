from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelyard.engines import EngineError
from modelyard.engines.llamacpp import find_llama_server


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    try:
        return find_llama_server()
    except EngineError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
