"""Find Node.js and the bundled ``bridge-js`` server, or explain exactly what is missing.

Every cause has its own :class:`BridgeNotFoundError` (``.cause``) naming what was looked for, where,
and the command that fixes it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BridgeNotFoundError

__all__ = [
    "MIN_NODE_MAJOR",
    "BridgeInstall",
    "check_js_dir",
    "default_js_dir",
    "find_node",
    "locate",
    "node_version",
]

MIN_NODE_MAJOR = 20
PGLITE_PACKAGE = "@electric-sql/pglite"
_NODE_FIX = "install Node.js >= 20 (apt-get install nodejs) or set HIVE_BRIDGE_NODE to its path"


@dataclass(frozen=True)
class BridgeInstall:
    """A usable Node.js and bridge-js checkout."""

    node: Path
    node_version: str
    js_dir: Path
    pglite_version: str

    @property
    def server_js(self) -> Path:
        return self.js_dir / "server.js"


def default_js_dir() -> Path:
    """``bridge-js/`` next to the ``hive_bridge`` package (the repository layout)."""
    import hive_bridge

    return Path(hive_bridge.__file__).resolve().parent.parent / "bridge-js"


def _npm_fix(js_dir: Path) -> str:
    return f"run `make install` in the repository, or: npm ci --prefix {shlex.quote(str(js_dir))}"


# ------------------------------------------------------------------------------------- node


def find_node(setting: str | None = None) -> Path:
    """The node executable: ``HIVE_BRIDGE_NODE`` if set (a path or a name on PATH), else ``node``."""
    if setting:
        if os.sep in setting:
            path = Path(setting).expanduser()
            if not path.exists():
                raise BridgeNotFoundError(
                    cause="node_missing",
                    what=f"HIVE_BRIDGE_NODE={setting} does not exist",
                    looked_in=str(path),
                    fix=_NODE_FIX,
                )
            if path.is_dir() or not os.access(path, os.X_OK):
                raise BridgeNotFoundError(
                    cause="node_not_executable",
                    what=f"HIVE_BRIDGE_NODE={setting} is not an executable file",
                    looked_in=str(path),
                    fix=f"chmod +x {shlex.quote(str(path))}, or {_NODE_FIX}",
                )
            return path.absolute()
        found = shutil.which(setting)
        if found is None:
            raise BridgeNotFoundError(
                cause="node_missing",
                what=f"HIVE_BRIDGE_NODE={setting} is not found on PATH",
                looked_in=f"PATH={os.environ.get('PATH', '')}",
                fix=_NODE_FIX,
            )
        return Path(found)
    found = shutil.which("node")
    if found is None:
        raise BridgeNotFoundError(
            cause="node_missing",
            what="Node.js (`node`) is not found on PATH",
            looked_in=f"PATH={os.environ.get('PATH', '')}",
            fix=_NODE_FIX,
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
            fix=_NODE_FIX,
        ) from exc
    text = (out.stdout or "").strip()
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text)
    if out.returncode != 0 or match is None:
        detail = text or (out.stderr or "").strip() or f"exit status {out.returncode}"
        raise BridgeNotFoundError(
            cause="node_broken",
            what=f"`{node} --version` did not print a Node.js version (got: {detail[:200]})",
            looked_in=str(node),
            fix=_NODE_FIX,
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
            fix=_NODE_FIX,
        )
    return version


# --------------------------------------------------------------------------------- bridge-js


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def check_js_dir(js_dir: Path, *, from_setting: bool = False) -> str:
    """Check a bridge-js dir: server.js, lockfile, node_modules matching it, PGlite present.

    Returns the installed PGlite version.
    """
    origin = "HIVE_BRIDGE_JS_DIR" if from_setting else "the default location next to hive_bridge"
    if not js_dir.is_dir():
        raise BridgeNotFoundError(
            cause="js_dir_missing",
            what=f"the bridge-js directory does not exist ({origin})",
            looked_in=str(js_dir),
            fix=(
                "set HIVE_BRIDGE_JS_DIR to the bridge-js directory of a hive-bridge checkout, "
                "or unset it to use the bundled one"
                if from_setting
                else "run hive-bridge from a complete checkout (bridge-js/ next to hive_bridge/), "
                "or set HIVE_BRIDGE_JS_DIR to a bridge-js directory"
            ),
        )
    server = js_dir / "server.js"
    if not server.is_file():
        raise BridgeNotFoundError(
            cause="server_js_missing",
            what=f"bridge-js has no server.js ({origin})",
            looked_in=str(server),
            fix="restore it from git (git checkout -- bridge-js/server.js) or set "
            "HIVE_BRIDGE_JS_DIR to a complete bridge-js directory",
        )
    lockfile = js_dir / "package-lock.json"
    if not lockfile.is_file():
        raise BridgeNotFoundError(
            cause="lockfile_missing",
            what="bridge-js has no package-lock.json, so its node_modules cannot be checked",
            looked_in=str(lockfile),
            fix="restore it from git (git checkout -- bridge-js/package-lock.json)",
        )
    modules = js_dir / "node_modules"
    if not modules.is_dir():
        raise BridgeNotFoundError(
            cause="node_modules_missing",
            what="the Node packages of bridge-js are not installed (no node_modules)",
            looked_in=str(modules),
            fix=_npm_fix(js_dir),
        )
    try:
        packages: dict[str, Any] = _read_json(lockfile).get("packages", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise BridgeNotFoundError(
            cause="lockfile_missing",
            what=f"bridge-js/package-lock.json cannot be read ({exc})",
            looked_in=str(lockfile),
            fix="restore it from git (git checkout -- bridge-js/package-lock.json)",
        ) from exc
    problems: list[str] = []
    for key, entry in sorted(packages.items()):
        if not key.startswith("node_modules/") or not isinstance(entry, dict):
            continue
        wanted = entry.get("version")
        manifest = js_dir / key / "package.json"
        try:
            installed = _read_json(manifest).get("version")
        except (OSError, ValueError, AttributeError):
            if entry.get("optional") or entry.get("peer") or entry.get("dev"):
                continue
            problems.append(f"{key[len('node_modules/') :]} {wanted} missing")
            continue
        if wanted and installed != wanted:
            problems.append(
                f"{key[len('node_modules/') :]} is {installed}, lockfile wants {wanted}"
            )
    pglite_manifest = modules / PGLITE_PACKAGE / "package.json"
    if not pglite_manifest.is_file():
        raise BridgeNotFoundError(
            cause="pglite_missing",
            what=f"the PGlite package ({PGLITE_PACKAGE}) is not installed in bridge-js",
            looked_in=str(pglite_manifest.parent),
            fix=_npm_fix(js_dir),
        )
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise BridgeNotFoundError(
            cause="node_modules_mismatch",
            what=f"bridge-js/node_modules does not match package-lock.json: {shown}",
            looked_in=str(modules),
            fix=_npm_fix(js_dir),
        )
    version = _read_json(pglite_manifest).get("version")
    return str(version)


def locate(*, node: str | None = None, js_dir: Path | None = None) -> BridgeInstall:
    """Find and check everything the Node server needs (``HIVE_BRIDGE_NODE``/``HIVE_BRIDGE_JS_DIR``)."""
    node_path = find_node(node)
    version = node_version(node_path)
    directory = (js_dir or default_js_dir()).absolute()
    pglite_version = check_js_dir(directory, from_setting=js_dir is not None)
    return BridgeInstall(
        node=node_path, node_version=version, js_dir=directory, pglite_version=pglite_version
    )
