"""LISTEN/NOTIFY across clients. The one backend listens for everybody; the front end routes each
notification to the clients that listen on its channel, with the notifying client's pid."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from wire_support import WireServer, in_thread


def _listener(queue: asyncio.Queue) -> Callable[..., None]:
    def callback(conn, pid, channel, payload) -> None:
        queue.put_nowait((pid, channel, payload))

    return callback


async def _next(queue: asyncio.Queue, timeout: float = 5.0) -> tuple[int, str, str]:
    return await asyncio.wait_for(queue.get(), timeout)


@pytest.mark.asyncio
async def test_asyncpg_listener_gets_notify_from_psycopg(server: WireServer, unique) -> None:
    channel = unique("chan")
    listener = await server.asyncpg()
    got: asyncio.Queue = asyncio.Queue()
    await listener.add_listener(channel, _listener(got))
    notifier = await in_thread(server.psycopg, autocommit=True)
    try:
        await in_thread(notifier.execute, f"NOTIFY {channel}, 'hello'")
        await in_thread(notifier.execute, "SELECT pg_notify(%s, %s)", (channel, "second"))
        pid = notifier.info.backend_pid
        assert await _next(got) == (pid, channel, "hello")
        assert await _next(got) == (pid, channel, "second")
        assert got.empty()
    finally:
        await in_thread(notifier.close)
        await listener.close()


def test_psycopg_notifies_generator(server: WireServer, unique) -> None:
    channel = unique("pchan")
    with server.psycopg(autocommit=True) as listener, server.psycopg(autocommit=True) as notifier:
        listener.execute(f"LISTEN {channel}")
        notifier.execute(f"NOTIFY {channel}, 'p1'")
        notifier.execute(f"NOTIFY {channel}, 'p2'")
        got = [(n.channel, n.payload, n.pid) for n in listener.notifies(timeout=30, stop_after=2)]
        assert got == [
            (channel, "p1", notifier.info.backend_pid),
            (channel, "p2", notifier.info.backend_pid),
        ]


@pytest.mark.asyncio
async def test_notify_in_transaction_delivered_on_commit_only(server: WireServer, unique) -> None:
    channel = unique("txchan")
    listener = await server.asyncpg()
    notifier = await server.asyncpg()
    got: asyncio.Queue = asyncio.Queue()
    await listener.add_listener(channel, _listener(got))
    try:
        tx = notifier.transaction()
        await tx.start()
        await notifier.execute(f"NOTIFY {channel}, 'committed'")
        # Not before the commit. (A negative can only be checked over some time: 0.3 s here.)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(got.get(), 0.3)
        await tx.commit()
        assert (await _next(got))[2] == "committed"

        tx = notifier.transaction()
        await tx.start()
        await notifier.execute(f"NOTIFY {channel}, 'rolled back'")
        await tx.rollback()
        await notifier.execute(f"NOTIFY {channel}, 'after rollback'")
        # notifications arrive in order: the first one after the rollback is the next NOTIFY
        assert (await _next(got))[2] == "after rollback"
        assert got.empty()
    finally:
        await listener.close()
        await notifier.close()


async def _unlisten(how: str, server: WireServer, conn, channel: str, callback) -> None:
    if how == "asyncpg remove_listener":  # asyncpg sends UNLISTEN with fetch(): extended protocol
        await conn.remove_listener(channel, callback)
    elif how == "simple query":  # like psql
        await conn.execute(f"UNLISTEN {channel}")
    elif how == "psycopg execute":
        with await in_thread(server.psycopg, autocommit=True) as pconn:
            await in_thread(pconn.execute, f"LISTEN {channel}")
            await in_thread(pconn.execute, f"UNLISTEN {channel}")
    else:
        raise AssertionError(how)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["asyncpg remove_listener", "simple query", "psycopg execute"])
async def test_unlisten_stops_only_that_client(server: WireServer, unique, how: str) -> None:
    channel = unique("uchan")
    sentinel = unique("sentinel")
    l1 = await server.asyncpg()
    l2 = await server.asyncpg()
    notifier = await server.asyncpg()
    q1: asyncio.Queue = asyncio.Queue()
    q2: asyncio.Queue = asyncio.Queue()
    cb1 = _listener(q1)
    try:
        await l1.add_listener(channel, cb1)
        await l1.add_listener(sentinel, cb1)
        await l2.add_listener(channel, _listener(q2))
        await notifier.execute(f"NOTIFY {channel}, 'both'")
        assert (await _next(q1))[2] == "both"
        assert (await _next(q2))[2] == "both"

        await _unlisten(how, server, l1, channel, cb1)
        await notifier.execute(f"NOTIFY {channel}, 'still for l2'")
        await notifier.execute(f"NOTIFY {sentinel}, 'sentinel'")
        # l1 hears the later sentinel (on the channel it kept) ...
        _pid, ch, payload = await _next(q1)
        if how != "psycopg execute":
            # ... and nothing before it on the channel it left
            assert (ch, payload) == (sentinel, "sentinel")
            assert q1.empty()
        # ... and l2, which never unlistened, still hears the channel
        assert (await _next(q2))[2] == "still for l2"
    finally:
        for c in (l1, l2, notifier):
            await c.close()


@pytest.mark.asyncio
async def test_pool_release_does_not_unlisten_others(server: WireServer, unique) -> None:
    """asyncpg's Pool resets a released connection with ``UNLISTEN *`` (among other statements):
    that must not stop notifications for the other clients of the one backend."""
    import asyncpg

    channel = unique("poolchan")
    listener = await server.asyncpg()
    got: asyncio.Queue = asyncio.Queue()
    await listener.add_listener(channel, _listener(got))
    pool = await asyncpg.create_pool(server.async_dsn, ssl=False, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await conn.execute(f"NOTIFY {channel}, 'before release'")
        assert (await _next(got))[2] == "before release"
        # the release ran the reset query; notify again from the pool and from a plain connection
        async with pool.acquire() as conn:
            await conn.execute(f"NOTIFY {channel}, 'after release'")
        assert (await _next(got))[2] == "after release"
    finally:
        await asyncio.wait_for(pool.close(), 10)
        await listener.close()


@pytest.mark.asyncio
async def test_closed_listener_does_not_break_notify(server: WireServer, unique) -> None:
    channel = unique("cchan")
    gone = await server.asyncpg()
    killed = await server.asyncpg()
    stays = await server.asyncpg()
    notifier = await server.asyncpg()
    got: asyncio.Queue = asyncio.Queue()
    try:
        await gone.add_listener(channel, _listener(asyncio.Queue()))
        await killed.add_listener(channel, _listener(asyncio.Queue()))
        await stays.add_listener(channel, _listener(got))
        await gone.close()  # a clean close
        killed.terminate()  # the socket just goes away
        for i in range(3):
            await notifier.execute(f"NOTIFY {channel}, 'n{i}'")
        assert [(await _next(got))[2] for _ in range(3)] == ["n0", "n1", "n2"]
        assert await notifier.fetchval("SELECT 1") == 1
    finally:
        for c in (stays, notifier):
            await c.close()


def test_listen_from_threads(server: WireServer, unique) -> None:
    """Three psycopg listeners in threads, one notifier: each listener gets every payload once."""
    channel = unique("tchan")
    results: dict[int, list[str]] = {}
    ready = threading.Barrier(4)

    def listen(k: int) -> None:
        with server.psycopg(autocommit=True) as conn:
            conn.execute(f"LISTEN {channel}")
            ready.wait(10)
            results[k] = [n.payload for n in conn.notifies(timeout=10, stop_after=5)]

    threads = [threading.Thread(target=listen, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    ready.wait(10)
    with server.psycopg(autocommit=True) as notifier:
        for i in range(5):
            notifier.execute("SELECT pg_notify(%s, %s)", (channel, f"m{i}"))
    for t in threads:
        t.join(15)
    assert results == {k: [f"m{i}" for i in range(5)] for k in range(3)}
