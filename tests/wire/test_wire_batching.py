"""Several waiting clients' requests run in one hop to the PGlite worker (bridge-js/src/batch.js).

A holder keeps the backend while the others queue up; when it commits, the queued requests run as a
batch. Each client gets exactly its own answers; a cancel of a request in the batch answers that client
with 57014 (skipped before it started, or stopped while it ran), and every other request completes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import errors
from wire_support import RawConn, WireServer, message, query_message, split_messages, wait_until

CLIENTS = 6


def activity(server: WireServer) -> dict[str, Any]:
    result: dict[str, Any] = server.stats()["activity"]
    return result


def queue_behind_a_writer(
    server: WireServer, pool: ThreadPoolExecutor, sleep_s: list[float], table: str
) -> tuple[psycopg.Connection[Any], list[psycopg.Connection[Any]], list[Future[Any]]]:
    holder = server.psycopg()
    holder.execute(f"INSERT INTO {table} VALUES (0)")  # a writer: it keeps the backend
    conns = [server.psycopg(autocommit=True) for _ in sleep_s]
    futures = []
    for i, (conn, s) in enumerate(zip(conns, sleep_s, strict=True)):
        futures.append(
            pool.submit(
                lambda c=conn, s=s, i=i: c.execute("SELECT pg_sleep(%s), %s", (s, i)).fetchone()
            )
        )
        # queue them one at a time, so the batch has them in this order
        wait_until(
            lambda n=i + 1: activity(server)["waiting"] == n, timeout=20, what=f"{i + 1} waiting"
        )
    return holder, conns, futures


def test_queued_requests_run_as_one_batch(server: WireServer, unique: Callable[[str], str]) -> None:
    table = unique("batch")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (v int)")
    before = activity(server)["batching"]["batches"]
    with ThreadPoolExecutor(CLIENTS) as pool:
        holder, conns, futures = queue_behind_a_writer(server, pool, [0.0] * CLIENTS, table)
        try:
            holder.commit()
            assert [f.result(timeout=30) for f in futures] == [("", i) for i in range(CLIENTS)]
        finally:
            holder.close()
            for c in conns:
                c.close()
    after = activity(server)["batching"]
    assert after["batches"] > before


@pytest.mark.parametrize("which", ["running", "not_started"])
def test_cancel_inside_a_batch(
    server: WireServer, unique: Callable[[str], str], which: str
) -> None:
    table = unique("bcancel")
    with server.psycopg(autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (v int)")
    # the first request of the batch runs long; the others are short: cancel the first while it runs, or
    # the last before it starts
    sleeps = [3.0] + [0.0] * (CLIENTS - 1)
    target = 0 if which == "running" else CLIENTS - 1
    with ThreadPoolExecutor(CLIENTS) as pool:
        holder, conns, futures = queue_behind_a_writer(server, pool, sleeps, table)
        try:
            holder.commit()
            wait_until(
                lambda: (activity(server).get("job") or "").startswith("batch"),
                timeout=20,
                what="the batch to start",
            )
            conns[target].cancel()
            results: list[Any] = []
            for i, f in enumerate(futures):
                if i == target:
                    with pytest.raises(errors.QueryCanceled):
                        f.result(timeout=60)
                    results.append("canceled")
                else:
                    results.append(f.result(timeout=60))
            expected = [("", i) for i in range(CLIENTS)]
            expected[target] = "canceled"  # type: ignore[call-overload]
            assert results == expected
            # every connection, the canceled one too, still works
            assert [c.execute("SELECT 1").fetchone() for c in conns] == [(1,)] * CLIENTS
        finally:
            holder.close()
            for c in conns:
                c.close()


def test_pipelining_clients_get_their_own_answers_in_order(server: WireServer) -> None:
    """Replies of one hop are written while the next hop runs (batch.js): a client whose next request is
    already in that next hop still reads every answer in the order it asked, and a Terminate right behind
    a request still gets that request's answer first."""
    rounds = 60
    before = activity(server)["batching"]["batched_requests"]
    errors_seen: list[str] = []

    def client(k: int) -> None:
        try:
            talk(k)
        except Exception as exc:  # a thread's exception would otherwise be lost
            errors_seen.append(f"client {k}: {exc!r}")

    def talk(k: int) -> None:
        rng = random.Random(k)
        with RawConn(server.port, timeout=60) as c:
            c.start()
            expected: list[str] = []
            got: list[str] = []
            for r in range(rounds):
                # 1-3 requests in one write, and sometimes one more sent before reading any answer
                burst = [f"SELECT {k * 100000 + r * 10 + i}" for i in range(rng.randint(1, 3))]
                c.send(b"".join(query_message(q) for q in burst))
                if rng.random() < 0.5:
                    burst.append(f"SELECT {k * 100000 + r * 10 + 9}")
                    c.send(query_message(burst[-1]))
                expected += [q.split()[1] for q in burst]
                for _ in burst:
                    for kind, body in c.read_until_ready():
                        if kind == b"D":
                            got.append(body[6:].decode())
                        elif kind == b"E":
                            errors_seen.append(body.decode(errors="replace"))
            last = str(k * 100000 + 99999)
            c.send(query_message(f"SELECT {last}") + message(b"X"))
            rows = [
                body[6:].decode()
                for kind, body in split_messages(c.read_to_eof(timeout=60))
                if kind == b"D"
            ]
            if got != expected or rows != [last]:
                errors_seen.append(f"client {k}: answers out of order or missing")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client did not get all its answers"
    assert errors_seen == []
    assert activity(server)["batching"]["batched_requests"] > before
