"""The stock ``pglite-server`` from the same node_modules (``@electric-sql/pglite-socket``): no
extensions, ``--max-connections 8``. Its COPY FROM STDIN hangs the server (a known defect), so its
``pgbench -i`` generates data server-side (``-I dtGvp``) and the COPY steps are skipped."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import NODE_MODULES, REG, Conn, Handle, json_version, stop_proc, wait_line

SERVER = NODE_MODULES / "@electric-sql/pglite-socket/dist/scripts/server.js"


class Stock:
    name = "stock"
    vector = False
    copy = False
    pgbench_init_steps: str | None = "dtGvp"

    def start(self, data_dir: Path, deadline: float) -> Handle:
        argv = ["node", str(SERVER), "--db", str(data_dir), "--port", "0", "--max-connections", "8"]
        log_path = data_dir.parent / f"{data_dir.name}.stock.log"
        with open(log_path, "ab") as out:
            offset = out.seek(0, 2)  # the same data dir's log is appended to by every start
            p = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        REG.procs.append(p)
        line = wait_line(log_path, "PGLiteSocketServer listening on", p, deadline, offset)
        port = int(json.loads(line.split("listening on", 1)[1].strip())["port"])
        return Handle(
            Conn("127.0.0.1", port),
            lambda: [p.pid] if p.poll() is None else [],
            lambda: stop_proc(p),
        )

    def start_timed(self, data_dir: Path) -> tuple[float, dict[str, Any]]:
        from .common import wait_sql

        t0 = time.monotonic()
        h = self.start(data_dir, time.monotonic() + 120)
        try:
            took = wait_sql(h.conn, time.monotonic() + 60) - t0
        finally:
            h.stop()
        return took, {}

    def versions(self) -> dict[str, Any]:
        return {
            "pglite_socket": json_version(NODE_MODULES / "@electric-sql/pglite-socket/package.json")
        }
