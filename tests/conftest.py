"""Fixtures: hermetic environment, process-leak checks, a shared bridge, fresh data dirs."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from helpers import FAST, MARKER, SHARED_SERVER_DIRS, describe, marked_processes, wait_until

from hive_bridge import Bridge
from hive_bridge.locate import locate
from hive_bridge.template import prepare_template

# Hermetic: no HIVE_* setting of the developer's shell leaks into a test, and every process the
# tests start (CLI, supervisors, Node) carries a marker so leaks can be found.
for _key in list(os.environ):
    if _key.startswith("HIVE_"):
        del os.environ[_key]
os.environ[MARKER] = uuid.uuid4().hex


def _is_session_server(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(d in cmdline for d in SHARED_SERVER_DIRS)


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_at_end() -> Iterator[None]:
    """After the whole session (all fixtures torn down) no process the tests started may live."""
    yield
    try:
        wait_until(lambda: not marked_processes(), timeout=15, what="test processes to exit")
    except AssertionError:
        left = marked_processes()
        for proc in left:
            proc.kill()
        pytest.fail(f"processes started by the tests were left running:\n{describe(left)}")


TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session", autouse=True)
def _template_prebuilt() -> None:
    """Build bridge-js's data-dir template once up front (a no-op when `make install` did), so new
    data dirs are quick copies and the first test that creates one is not 3 s slower."""
    prepare_template(locate())


@pytest.fixture(autouse=True)
def _no_process_left_by_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test must leave behind no process it started (session-scoped servers excepted).

    Only for the tests of this directory: subdirectories (tests/wire) bring their own checks and
    their own session servers, which this check would take for leaks.
    """
    if request.node.path.parent != TESTS_DIR:
        yield
        return
    before = {p.pid for p in marked_processes()}
    yield

    def leftovers() -> list[psutil.Process]:
        return [p for p in marked_processes(exclude=_is_session_server) if p.pid not in before]

    try:
        wait_until(lambda: not leftovers(), timeout=10, what="the test's processes to exit")
    except AssertionError:
        left = leftovers()
        for proc in left:
            proc.kill()
        pytest.fail(f"test left processes running:\n{describe(left)}")


@pytest.fixture(scope="session")
def template_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir initialised once (initdb in wasm costs seconds); copy it with ``fresh_data_dir``."""
    base = tmp_path_factory.mktemp("template")
    data_dir = base / "db"
    SHARED_SERVER_DIRS.append(str(data_dir))
    with Bridge(data_dir, options=FAST):
        pass
    return data_dir


@pytest.fixture
def fresh_data_dir(template_data_dir: Path, tmp_path: Path) -> Path:
    """An initialised, never-used data dir of this test's own."""
    target = tmp_path / "data" / "hive.db"
    target.parent.mkdir()
    shutil.copytree(template_data_dir, target)
    return target


@pytest.fixture(scope="session")
def shared_bridge(
    template_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    """One server for the many tests that only need a database (use unique table names)."""
    data_dir = tmp_path_factory.mktemp("shared") / "db"
    shutil.copytree(template_data_dir, data_dir)
    SHARED_SERVER_DIRS.append(str(data_dir))
    bridge = Bridge(data_dir, options=FAST).start()
    yield bridge
    bridge.stop()


@pytest.fixture
def shared_dsn(shared_bridge: Bridge) -> str:
    return shared_bridge.dsn


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique SQL identifiers: the shared server is one database for every test."""
    suffix = uuid.uuid4().hex[:8]
    return lambda name: f"{name}_{suffix}"


@pytest.fixture
def start_bridge() -> Iterator[Callable[..., Bridge]]:
    """Start dedicated bridges for lifecycle tests; all are stopped at teardown."""
    bridges: list[Bridge] = []

    def start(data_dir: Path | None, **kwargs: object) -> Bridge:
        kwargs.setdefault("options", FAST)
        bridge = Bridge(data_dir, memory=data_dir is None, **kwargs)  # type: ignore[arg-type]
        bridges.append(bridge)
        return bridge.start()

    yield start
    for bridge in bridges:
        bridge.stop()
