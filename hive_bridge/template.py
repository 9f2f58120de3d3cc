"""The cached pristine data-dir template of bridge-js: where it is, and building it ahead of time.

A new data dir is a copy of the template (~0.1 s) instead of an initdb (~3.5 s). The server builds
it on first need; ``make install`` and the test session build it up front
(``node server.js --prepare-template``) so the first start is fast too. The location mirrors
``templateDir()`` in ``bridge-js/src/datadir.js``.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BridgeStartError
from .locate import BridgeInstall
from .readiness import parse_events

__all__ = ["TemplateInfo", "cache_root", "prepare_template", "template_dir"]


@dataclass(frozen=True)
class TemplateInfo:
    path: Path
    built: bool


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir``, else ``$HIVE_BRIDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/hive-bridge`` or
    ``~/.cache/hive-bridge``."""
    if cache_dir is not None:
        return cache_dir
    configured = os.environ.get("HIVE_BRIDGE_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "hive-bridge" if xdg else Path.home() / ".cache" / "hive-bridge"


def template_dir(pglite_version: str, cache_dir: Path | None = None) -> Path:
    """Where bridge-js keeps the template for this PGlite version (bridge-js/src/datadir.js): one per
    version, since offering extensions does not change what initdb makes."""
    return cache_root(cache_dir) / "templates" / f"pglite-{pglite_version}"


def prepare_template(
    install: BridgeInstall,
    *,
    cache_dir: Path | None = None,
    timeout: float = 300.0,
) -> TemplateInfo:
    """Build the template unless it exists (``node server.js --prepare-template``); this also extracts
    the extension bundles into the cache once."""
    argv = [str(install.node), str(install.server_js), "--prepare-template"]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=install.js_dir,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    events = parse_events(result.stdout)
    for event in events:
        if event.get("event") == "template" and result.returncode == 0:
            return TemplateInfo(path=Path(str(event["path"])), built=bool(event.get("built")))
    error = next((e for e in events if e.get("event") == "error"), {})
    raise BridgeStartError(
        data_dir=str(template_dir(install.pglite_version, cache_dir)),
        reason="the data-dir template could not be built",
        exit_code=result.returncode,
        code=error.get("code"),
        node_message=error.get("message") or json.dumps(result.stdout[-500:]),
        hint=error.get("hint"),
        log_tail=result.stderr[-4000:],
        fix="make the cache directory writable (or set HIVE_BRIDGE_CACHE_DIR); the server still "
        "works without a template, it only creates new data dirs more slowly",
    )
