"""The lock files that `make install` installs from (with --require-hashes) pin what pyproject.toml pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", re.MULTILINE)


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    text = path.read_text()
    found = {_name(name): version for name, version in PIN.findall(text)}
    assert len(found) == len(re.findall(r"^\S", text.split("\n", 2)[-1], re.MULTILINE)), "a line that is not a pin"
    return found


def wanted(requirements: list[str]) -> dict[str, str]:
    out = {}
    for line in requirements:
        name, version = line.split("==")
        out[_name(name.split("[")[0])] = version
    return out


def test_the_locks_pin_what_pyproject_pins_each_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = wanted(project["dependencies"]), wanted(project["optional-dependencies"]["dev"])
    data = wanted([line for line in (ROOT / "requirements-data.in").read_text().splitlines()
                   if line and not line.startswith("#")])
    for lock, want in (("requirements.lock", runtime), ("requirements-dev.lock", {**runtime, **dev}),
                       ("requirements-data.lock", data)):
        locked = pins(ROOT / lock)
        assert {name: locked.get(name) for name in want} == want, f"{lock}: run `make lock`"
        blocks = (ROOT / lock).read_text().split(" \\\n    --hash=sha256:")
        assert len(blocks) > len(locked), f"{lock}: every pin has its hashes"
    assert set(pins(ROOT / "requirements-data.lock")) == set(data)  # data only: no dependency of theirs
