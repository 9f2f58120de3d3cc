"""Fixtures for the wire-protocol tests: real clients against ``node bridge-js/server.js`` directly.

- ``pristine_data_dir`` (session): initdb runs once (seconds in WASM); every server gets a copy.
- ``server_factory`` (session) / ``start_server`` (per test): start servers with command-line flags;
  each is stopped (SIGTERM, then SIGKILL) at teardown.
- ``server`` (session): one default server for the many tests that only need a database; tests on
  it use unique table names (``unique``).
- autouse checks after every test: no process the test started is left running, every server still
  alive that should be, and no server logged an internal error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

# test modules here `import wire_support`; pytest's default import mode puts this directory on
# sys.path anyway, this makes it hold under --import-mode=importlib too
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from wire_support import (
    SERVER_BUG_MARKERS,
    SERVER_JS,
    WireServer,
    spawn_server,
    tail,
    wait_until,
)

HERE = Path(__file__).resolve().parent

#: every wire test gets this timeout unless it sets its own ``@pytest.mark.timeout``
DEFAULT_TEST_TIMEOUT = 60


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "wire: tests of the Node wire front end with real clients")
    config.addinivalue_line("markers", "bridge: starts real Node/PGlite servers")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session: touch only the ones in this directory.
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.wire)
        item.add_marker(pytest.mark.bridge)
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


# ---- servers ---------------------------------------------------------------------------------------


class ServerFactory:
    """Starts servers on copies of the pristine data dir and remembers every process it spawned."""

    def __init__(self, pristine: Path, base: Path) -> None:
        self.pristine = pristine
        self.base = base
        self.servers: list[WireServer] = []
        self.count = 0

    def start(self, **flags: Any) -> WireServer:
        """``start(queue_timeout_ms=500)`` runs ``server.js ... --queue-timeout-ms 500``."""
        self.count += 1
        workdir = self.base / f"server{self.count}"
        data_dir = workdir / "db"
        shutil.copytree(self.pristine, data_dir)
        server = spawn_server(data_dir, workdir, flags)
        self.servers.append(server)
        return server

    def running(self) -> list[WireServer]:
        return [s for s in self.servers if s.exit_code is None]

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="session")
def node_available() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (SERVER_JS.parent / "node_modules").is_dir():
        pytest.skip("bridge-js/node_modules is missing: run npm ci in bridge-js")


@pytest.fixture(scope="session")
def pristine_data_dir(node_available: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir initialised once, closed cleanly with SIGTERM, never used again except to copy."""
    base = tmp_path_factory.mktemp("wire-pristine")
    data_dir = base / "db"
    server = spawn_server(data_dir, base / "init", {}, timeout=120)
    code = server.stop()
    assert code == 0, f"the first server exited with {code} on SIGTERM:\n{tail(server.log_path)}"
    assert (data_dir / "PG_VERSION").is_file(), f"no PG_VERSION in {data_dir}"
    return data_dir


@pytest.fixture(scope="session")
def server_factory(
    pristine_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    factory = ServerFactory(pristine_data_dir, tmp_path_factory.mktemp("wire-servers"))
    yield factory
    factory.stop_all()


@pytest.fixture
def start_server(server_factory: ServerFactory) -> Iterator[Callable[..., WireServer]]:
    """Start a dedicated server with flags, e.g. ``start_server(max_connections=3)``.

    Servers started here are stopped at the end of the test; one that died on its own, or did not
    exit cleanly on SIGTERM, fails the test.
    """
    mine: list[WireServer] = []

    def start(**flags: Any) -> WireServer:
        server = server_factory.start(**flags)
        mine.append(server)
        return server

    yield start
    problems = []
    for server in mine:
        died = server.proc.poll() is not None
        code = server.stop()
        if died:
            problems.append(f"{server!r} exited on its own with {code}:\n{tail(server.log_path)}")
        elif code != 0:
            problems.append(f"{server!r} exited with {code} on SIGTERM:\n{tail(server.log_path)}")
    if problems:
        pytest.fail("\n\n".join(problems))


@pytest.fixture(scope="session")
def server(server_factory: ServerFactory) -> WireServer:
    """The shared default server (no special flags)."""
    return server_factory.start()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique SQL identifiers: the shared server is one database for every test."""
    suffix = uuid.uuid4().hex[:8]
    return lambda name: f"{name}_{suffix}"


# ---- checks after every test -------------------------------------------------------------------------


def _children() -> dict[int, str]:
    out = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            out[proc.pid] = " ".join(proc.cmdline())[:200]
        except psutil.Error:
            continue
    return out


@pytest.fixture(autouse=True)
def _wire_checks(request: pytest.FixtureRequest) -> Iterator[None]:
    """No process left behind, no server died, no server logged an internal error."""
    factory: ServerFactory | None = None
    if "server_factory" in request.fixturenames:
        factory = request.getfixturevalue("server_factory")
    # Higher-scoped fixtures (the session server, module servers) are set up before this one, so
    # whatever runs now is not this test's doing.
    children_before = set(_children())
    servers_before = set(id(s) for s in factory.servers) if factory else set()
    log_offsets = {id(s): s.log_size() for s in factory.running()} if factory else {}
    yield
    problems: list[str] = []
    for server in factory.servers if factory else []:
        if id(server) not in servers_before and server.exit_code is None:
            # started by the test itself (not by a session or module fixture) and never stopped
            server.stop()
            problems.append(f"{server!r} was started by the test and left running")

    def leftovers() -> dict[int, str]:
        return {pid: cmd for pid, cmd in _children().items() if pid not in children_before}

    try:
        wait_until(
            lambda: not leftovers(), timeout=10, what="processes started by the test to exit"
        )
    except AssertionError:
        left = leftovers()
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        problems.append(
            "the test left processes running:\n" + "\n".join(f"  {p}: {c}" for p, c in left.items())
        )
    if factory:
        for server in factory.servers:
            if (
                id(server) in servers_before
                and server.exit_code is None
                and server.proc.poll() is not None
            ):
                code = server.proc.returncode
                problems.append(
                    f"{server!r} died during the test (exit {code}):\n{tail(server.log_path)}"
                )
            offset = log_offsets.get(id(server), 0)
            try:
                new_log = server.log_since(offset)
            except OSError:
                continue
            bad = [
                ln
                for ln in new_log.splitlines()
                if any(m in ln.lower() for m in SERVER_BUG_MARKERS)
            ]
            if bad:
                problems.append(
                    f"{server!r} logged internal errors during the test:\n" + "\n".join(bad[:20])
                )
    if problems:
        pytest.fail("\n\n".join(problems))
