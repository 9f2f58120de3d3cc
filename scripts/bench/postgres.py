"""The local PostgreSQL 15 (``initdb``/``pg_ctl``), as the ``postgres`` user when run as root,
``fsync=off`` like PGlite (which forces it); pgvector if ``vector.so`` is installed."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import REG, Conn, Handle, run, short_error, wait_sql

BIN = Path("/usr/lib/postgresql/15/bin")


def as_postgres(argv: list[str]) -> list[str]:
    """Run as the unprivileged ``postgres`` user when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


class Postgres:
    name = "postgres"
    copy = True
    pgbench_init_steps: str | None = None

    def __init__(self) -> None:
        self.available = (BIN / "pg_ctl").exists()
        self.vector = Path("/usr/lib/postgresql/15/lib/vector.so").exists()
        self.root = Path(tempfile.mkdtemp(prefix="hive-bench-pg-"))
        os.chmod(self.root, 0o755)
        chown_to_postgres(self.root)
        REG.dirs.append(self.root)

    def data_dir(self, kind: str) -> Path:
        return self.root / kind

    def initdb(self, data_dir: Path) -> None:
        r = run(
            as_postgres(
                [
                    str(BIN / "initdb"),
                    "-D",
                    str(data_dir),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            ),
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {short_error(r.stderr or r.stdout)}")

    def start(self, data_dir: Path, deadline: float) -> Handle:
        if not (data_dir / "PG_VERSION").exists():
            self.initdb(data_dir)
        with contextlib.closing(__import__("socket").socket()) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        opts = (
            f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c logging_collector=off -c max_connections=100"
        )
        r = run(
            as_postgres(
                [
                    str(BIN / "pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-l",
                    str(data_dir / "log"),
                    "-w",
                    "-o",
                    opts,
                    "start",
                ]
            ),
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {short_error(r.stderr or r.stdout)}")

        def pids() -> list[int]:
            with contextlib.suppress(OSError, ValueError):
                return [int((data_dir / "postmaster.pid").read_text().split("\n")[0])]
            return []

        def stop() -> None:
            run(
                as_postgres([str(BIN / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"]),
                timeout=60,
            )

        REG.callbacks.append(stop)
        return Handle(
            Conn("127.0.0.1", port), pids, stop, info={"unix": Conn(str(self.root), port)}
        )

    def start_timed(self, data_dir: Path) -> tuple[float, dict[str, Any]]:
        t0 = time.monotonic()
        h = self.start(data_dir, time.monotonic() + 120)
        try:
            took = wait_sql(h.conn, time.monotonic() + 60) - t0
            time.sleep(1.0)
            mem = _memory(h)
        finally:
            h.stop()
        return took, {"idle": mem}

    def versions(self) -> dict[str, Any]:
        r = run([str(BIN / "postgres"), "--version"], timeout=10)
        return {"postgres": r.stdout.strip(), "pgvector": self.vector}

    def remove(self, data_dir: Path) -> None:
        shutil.rmtree(data_dir, ignore_errors=True)


def _memory(h: Handle) -> dict[str, float] | None:
    from .common import memory_of

    return memory_of(h.pids())
