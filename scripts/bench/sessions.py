"""The issue-9 workload: concurrent request-like SQLAlchemy sessions. Each of N threads handles
requests one after another: read, think 200 ms (the app works, the session holds its transaction),
write, commit. Wall time for all requests; the floor is requests x (200 ms + the queries)."""

from __future__ import annotations

import threading
import time
from typing import Any

from .common import Conn


def sessions(conn: Conn, clients: int, requests: int, think_s: float = 0.2) -> dict[str, Any]:
    import sqlalchemy
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    engine = sqlalchemy.create_engine(
        conn.sqlalchemy_url(), pool_size=clients, max_overflow=0, pool_pre_ping=True
    )
    with engine.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS bench_requests"))
        c.execute(text("CREATE TABLE bench_requests (id int PRIMARY KEY, hits int NOT NULL)"))
        c.execute(
            text("INSERT INTO bench_requests SELECT g, 0 FROM generate_series(0, :n) g"),
            {"n": clients - 1},
        )
    errors: list[str] = []

    def worker(i: int) -> None:
        try:
            for _ in range(requests):
                with Session(engine) as s:
                    s.execute(
                        text("SELECT hits FROM bench_requests WHERE id = :i"), {"i": i}
                    ).scalar()
                    time.sleep(think_s)
                    s.execute(
                        text("UPDATE bench_requests SET hits = hits + 1 WHERE id = :i"), {"i": i}
                    )
                    s.commit()
        except Exception as exc:  # reported, not raised: the other threads go on
            errors.append(f"{type(exc).__name__}: {exc}"[:200])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.perf_counter() - t
    with engine.begin() as c:
        total = c.execute(text("SELECT sum(hits) FROM bench_requests")).scalar()
        c.execute(text("DROP TABLE bench_requests"))
    engine.dispose()
    if errors:
        raise RuntimeError(f"{len(errors)} session(s) failed, first: {errors[0]}")
    if total != clients * requests:
        raise RuntimeError(f"expected {clients * requests} commits, found {total}")
    return {
        "clients": clients,
        "requests": requests,
        "seconds": took,
        "floor_s": requests * think_s,
    }
