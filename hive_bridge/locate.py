"""Find Node.js and the bundled ``bridge-js`` server, or explain exactly what is missing.

bridge-js is looked for in ``HIVE_BRIDGE_JS_DIR``, else ``hive_bridge/_bridge_js/`` (an installed
wheel carries it there, see ``setup.py``), else ``bridge-js/`` next to the package (a checkout).
Node is picked by :func:`hive_bridge.node.select_node`.

Every cause has its own :class:`BridgeNotFoundError` (``.cause``) naming what was looked for, where,
and the command that fixes it.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BridgeNotFoundError
from .node import MIN_NODE_MAJOR, NodeChoice, find_node, node_version, select_node

__all__ = [
    "BUNDLED_JS_DIR_NAME",
    "MIN_NODE_MAJOR",
    "BridgeInstall",
    "bundled_js_dir",
    "check_js_dir",
    "checkout_js_dir",
    "default_js_dir",
    "find_node",
    "locate",
    "node_version",
]

log = logging.getLogger("hive_bridge.locate")

PGLITE_PACKAGE = "@electric-sql/pglite"
#: where the wheel carries bridge-js (with its pruned node_modules), inside the package
BUNDLED_JS_DIR_NAME = "_bridge_js"


@dataclass(frozen=True)
class BridgeInstall:
    """A usable Node.js and bridge-js checkout."""

    node: Path
    node_version: str
    js_dir: Path
    pglite_version: str
    #: which rule picked ``node`` and why (:meth:`hive_bridge.node.NodeChoice.describe`)
    node_choice: NodeChoice | None = None

    @property
    def server_js(self) -> Path:
        return self.js_dir / "server.js"


def _package_dir() -> Path:
    import hive_bridge

    return Path(hive_bridge.__file__).resolve().parent


def bundled_js_dir() -> Path:
    """``hive_bridge/_bridge_js/``: bridge-js as an installed wheel carries it."""
    return _package_dir() / BUNDLED_JS_DIR_NAME


def checkout_js_dir() -> Path:
    """``bridge-js/`` next to the ``hive_bridge`` package (a checkout, or an editable install)."""
    return _package_dir().parent / "bridge-js"


def default_js_dir() -> Path:
    """The bridge-js an installed wheel carries if there is one, else the checkout's."""
    bundled = bundled_js_dir()
    return bundled if (bundled / "server.js").is_file() else checkout_js_dir()


def _npm_fix(js_dir: Path) -> str:
    if js_dir.name == BUNDLED_JS_DIR_NAME:
        return "reinstall hive-bridge (pip install --force-reinstall hive-bridge)"
    return f"run `make install` in the repository, or: npm ci --prefix {shlex.quote(str(js_dir))}"


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
                else "reinstall hive-bridge (pip install --force-reinstall hive-bridge: the wheel "
                "carries bridge-js), run it from a complete checkout (bridge-js/ next to "
                "hive_bridge/), or set HIVE_BRIDGE_JS_DIR to a bridge-js directory"
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
    choice = select_node(node)
    log.debug("using %s", choice.describe())
    directory = (js_dir or default_js_dir()).absolute()
    pglite_version = check_js_dir(directory, from_setting=js_dir is not None)
    return BridgeInstall(
        node=choice.path,
        node_version=choice.version,
        js_dir=directory,
        pglite_version=pglite_version,
        node_choice=choice,
    )
