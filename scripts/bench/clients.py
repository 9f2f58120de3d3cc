"""Client steps, each run in a child process (``python -m scripts.bench.clients SPEC``) so the
benchmark can kill a client that hangs. Prints one JSON line with the result.

The steps themselves live with their workloads (:mod:`.latency`, :mod:`.vectors`,
:mod:`.sessions`); this is only the dispatcher."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from .common import Conn
from .latency import latency_asyncpg, latency_psycopg
from .sessions import sessions
from .vectors import hnsw_build, vector_copy

STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "latency_psycopg": latency_psycopg,
    "latency_asyncpg": latency_asyncpg,
    "vector_copy": vector_copy,
    "hnsw_build": hnsw_build,
    "sessions": sessions,
}


def main() -> int:
    spec = json.loads(sys.argv[1])
    result = STEPS[spec["step"]](Conn.from_dict(spec["conn"]), **spec["args"])
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
