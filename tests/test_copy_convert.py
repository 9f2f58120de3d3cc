"""Text COPY FROM STDIN converted to binary COPY in the front end (bridge-js/src/copyconvert.js).

The front end hands PGlite a binary COPY when it can store exactly what PostgreSQL's text input would
store, and the original text COPY otherwise. These tests load rows with psycopg's text COPY and compare
what is stored with what a plain INSERT of the same text stores (bytes of every float), check that each
case the front end cannot convert exactly still gives PostgreSQL's own result, and that
``--no-copy-convert`` stores the very same bytes. Whether a COPY was converted is read from the server's
DEBUG log line, written before the COPY runs.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal, getcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import FAST, SHARED_SERVER_DIRS, wait_until
from psycopg import errors

from hive_bridge import Bridge
from hive_bridge.locate import locate

pytestmark = pytest.mark.bridge

CONVERTED = "converted to binary"
KEPT = "kept as text"


class Server:
    """A server, its DSN, and its log from a mark on."""

    def __init__(self, dsn: str, log: Path) -> None:
        self.dsn = dsn
        self.log = log

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def mark(self) -> int:
        return self.log.stat().st_size

    def log_since(self, mark: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def copy(
        self,
        statement: str,
        rows: Sequence[Sequence[Any]] = (),
        raw: bytes | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> str:
        """Run a COPY FROM STDIN (rows by write_row, or raw bytes); return its log lines."""
        mark = self.mark()
        with (
            self.connect() if conn is None else contextlib.nullcontext(conn) as c,
            c.cursor() as cur,
            cur.copy(statement) as cp,
        ):
            if raw is not None:
                for i in range(0, len(raw), 7):  # in pieces: rows span CopyData messages
                    cp.write(raw[i : i + 7])
            for row in rows:
                cp.write_row(row)
        return "\n".join(line for line in self.log_since(mark).splitlines() if "COPY " in line)


@pytest.fixture(scope="module")
def server(template_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One hive-bridge (DEBUG log) for the module; tests use their own tables."""
    data_dir = tmp_path_factory.mktemp("copyconv") / "db"
    shutil.copytree(template_data_dir, data_dir)
    SHARED_SERVER_DIRS.append(str(data_dir))
    bridge = Bridge(data_dir, options=FAST, log_level="DEBUG").start()
    assert bridge.paths is not None
    srv = Server(bridge.dsn, bridge.paths.server_log)
    with srv.connect() as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
    yield srv
    bridge.stop()


@pytest.fixture
def table(unique: Callable[[str], str]) -> str:
    return unique("cc")


# ---- stored exactly as INSERT stores the same text ------------------------------------------------

COLUMNS = (
    "id int8 PRIMARY KEY, v vector(4), note text, j jsonb, js json, u uuid, f4 float4, f8 float8,"
    " b bool, s int2, i int4, vc varchar(6), c char(4)"
)
NAMES = "id, v, note, j, js, u, f4, f8, b, s, i, vc, c"
#: each column as text, floats as their exact bytes
READ = (
    "SELECT id, encode(vector_send(v), 'hex'), v::text, note, j::text, js::text, u::text,"
    " encode(float4send(f4), 'hex'), encode(float8send(f8), 'hex'), b, s, i, vc, c::text,"
    " octet_length(c) FROM {} ORDER BY id"
)

CONVERTIBLE: list[tuple[Any, ...]] = [
    (
        1,
        "[0.1,-0.5,3.4028235e38,-3.4028235e38]",
        "tab\there",
        '{"b": [1, 2.50, "x\\ty"]}',
        "[1,  2]",
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "0.1",
        "0.1",
        True,
        32767,
        2147483647,
        "abcdef",
        "ab",
    ),
    (
        9223372036854775807,
        "[1.1754944e-38,1e-37,123456789,0.30000001192092896]",
        "new\nline, back\\slash, é漢🙂",
        "{}",
        "{}",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12",
        "NaN",
        "Infinity",
        False,
        -32768,
        -2147483648,
        "é漢",
        "abcd",
    ),
    (
        -9223372036854775808,
        "[ 5. , .5 ,+1.5, 1E+3 ]",
        "",
        "null",
        '"s"',
        None,
        "-Infinity",
        "1e308",
        None,
        0,
        -0,
        "",
        "é",
    ),
    (
        4,
        "[-0,0.000,0.123456789012345678901234567890,7e-3]",
        None,
        None,
        None,
        None,
        "-0",
        "2.2250738585072014e-308",
        True,
        None,
        None,
        None,
        None,
    ),
    (
        5,
        None,
        "\\N is text here",
        '{"k": "\\u00e9"}',
        None,
        None,
        "3.4028235e38",
        "-0.0",
        None,
        None,
        None,
        "x",
        "    ",
    ),
]


def load_both(server: Server, table: str, rows: list[tuple[Any, ...]]) -> tuple[str, list, list]:
    """The rows by text COPY into `table`, by INSERT into `table`_ref; (COPY's log, both contents)."""
    ref = f"{table}_ref"
    with server.connect() as c:
        c.execute(f"CREATE TABLE {table} ({COLUMNS}); CREATE TABLE {ref} ({COLUMNS})")
        marks = ", ".join(["%s"] * len(rows[0]))
        with c.cursor() as cur:
            # every value as text (psycopg sends str as unknown): the same input functions as COPY
            cur.executemany(
                f"INSERT INTO {ref} ({NAMES}) VALUES ({marks})",
                [
                    tuple(
                        None if v is None else str(v) if not isinstance(v, bool) else v for v in r
                    )
                    for r in rows
                ],
            )
    log = server.copy(f"COPY {table} ({NAMES}) FROM STDIN", rows)
    with server.connect() as c:
        got = c.execute(READ.format(table)).fetchall()
        want = c.execute(READ.format(ref)).fetchall()
    return log, got, want


def test_converted_rows_are_stored_as_insert_stores_them(server: Server, table: str) -> None:
    log, got, want = load_both(server, table, CONVERTIBLE)
    assert f"COPY {table}: {len(CONVERTIBLE)} rows {CONVERTED}" in log
    assert got == want
    # and what that is, for a few: bpchar padded, -0 kept, NaN as PostgreSQL's NaN
    by_id = {r[0]: r for r in got}
    assert by_id[1][13] == "ab" and by_id[1][14] == 4
    assert by_id[4][7] == "80000000"
    assert by_id[9223372036854775807][7] == "7fc00000"
    assert by_id[9223372036854775807][3] == "new\nline, back\\slash, é漢🙂"


@pytest.mark.parametrize(
    "vector",
    [
        "[1e-38,1,2,3]",  # subnormal float4
        "[16777217,1,2,3]",  # exactly halfway between two floats
        "[1.0000000596046448,1,2,3]",  # the double is halfway, the decimal is not: strtof rounds up
        "[1e-50,1,2,3]",  # underflow: pgvector stores strtof's 0
    ],
)
def test_values_whose_rounding_is_not_certain_stay_text(
    server: Server, table: str, vector: str
) -> None:
    rows = [(1, vector, *CONVERTIBLE[0][2:]), *CONVERTIBLE[1:]]
    log, got, want = load_both(server, table, rows)
    assert f"COPY {table}: {KEPT}" in log
    assert got == want


def test_random_vectors_store_the_same_bytes_without_conversion(
    server: Server, template_data_dir: Path, tmp_path: Path, table: str
) -> None:
    """--no-copy-convert: PostgreSQL parses the text; the bytes stored are the same (random vectors,
    random text with every escape psycopg writes, random float8)."""
    rnd = random.Random(13)
    chars = "aZ 0é漢🙂\t\n\r\\\b\f\v\"'N.,[]{}"

    def element() -> str:
        x = rnd.uniform(-2, 2) * 10 ** rnd.randint(-6, 6)
        kind = rnd.randrange(3)
        if kind == 0:  # pgvector-python: float32 values printed as Python floats
            return repr(struct.unpack("f", struct.pack("f", x))[0])
        if kind == 1:
            return f"{x:.{rnd.randint(1, 12)}g}"
        return repr(x)  # doubles, 17 significant digits

    def note() -> str | None:
        return None if rnd.random() < 0.1 else "".join(rnd.choices(chars, k=rnd.randint(0, 40)))

    rows = [
        (
            i,
            "[" + ",".join(element() for _ in range(384)) + "]",
            note(),
            repr(rnd.uniform(-1e9, 1e9)),
        )
        for i in range(200)
    ]
    ddl = f"CREATE TABLE {table} (id int, v vector(384), note text, x float8)"
    read = (
        f"SELECT id, encode(vector_send(v), 'hex'), note, encode(float8send(x), 'hex')"
        f" FROM {table} ORDER BY id"
    )
    with server.connect() as c:
        c.execute(ddl)
    log = server.copy(f"COPY {table} FROM STDIN", rows)
    assert f"COPY {table}: 200 rows {CONVERTED}" in log
    with server.connect() as c:
        converted = c.execute(read).fetchall()

    data_dir = tmp_path / "db"
    shutil.copytree(template_data_dir, data_dir)
    plain = start_node(data_dir, tmp_path / "node.log", "--no-copy-convert")
    try:
        with plain.connect() as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
            c.execute(ddl)
        log = plain.copy(f"COPY {table} FROM STDIN", rows)
        assert CONVERTED not in log and KEPT not in log  # not even looked at
        with plain.connect() as c:
            assert c.execute(read).fetchall() == converted
    finally:
        plain.stop()


class NodeServer(Server):
    def __init__(self, dsn: str, log: Path, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(dsn, log)
        self.proc = proc

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_node(data_dir: Path, log: Path, *flags: str) -> NodeServer:
    """The Node server run directly with extra flags (the supervisor passes none of these)."""
    install = locate()
    out = log.with_suffix(".out")
    with open(out, "wb") as o, open(log, "wb") as e:
        proc = subprocess.Popen(
            [str(install.node), str(install.server_js), "--data-dir", str(data_dir), "--no-lock",
             "--port", "0", "--admin-port", "-1", "--log-level", "debug", *flags],
            stdin=subprocess.PIPE, stdout=o, stderr=e, cwd=str(install.js_dir),
        )  # fmt: skip
    try:

        def first_line() -> str | None:
            text = out.read_text()
            if "\n" in text:
                return text.split("\n")[0]
            assert proc.poll() is None, f"the server exited: {log.read_text()[-500:]}"
            return None

        ready = json.loads(wait_until(first_line, timeout=60, what="the server's ready line"))
        assert ready["event"] == "ready", ready
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    dsn = f"host=127.0.0.1 port={ready['port']} user=postgres dbname=postgres gssencmode=disable"
    return NodeServer(dsn, log, proc)


def exact_float4(text: str) -> float:
    """strtof's result for a decimal string: the float4 nearest to its exact value, ties to even."""
    x = Fraction(text)
    if x == 0:
        return -0.0 if text.startswith("-") else 0.0
    near = struct.unpack("f", struct.pack("f", float(x)))[0]  # within one float4 of the answer
    bits = struct.unpack("I", struct.pack("f", abs(near)))[0]
    around = [
        struct.unpack("f", struct.pack("I", b))[0]
        for b in (bits - 1, bits, bits + 1)
        if b < 0x7F800000  # not infinity
    ]
    best = min(around, key=lambda f: (abs(Fraction(f) - abs(x)), struct.pack("f", f)[0] & 1))
    return best if x > 0 else -best


def near_midpoints(rnd: random.Random, n: int) -> list[str]:
    """Decimals at and around the midpoints between float4 neighbours, where double rounding bites."""
    out = []
    for _ in range(n):
        f = abs(struct.unpack("f", struct.pack("f", rnd.uniform(1e-30, 1e30)))[0])
        bits = struct.unpack("I", struct.pack("f", f))[0]
        mid = (Fraction(f) + Fraction(struct.unpack("f", struct.pack("I", bits + 1))[0])) / 2
        exact = Decimal(mid.numerator) / Decimal(mid.denominator)
        sign = rnd.choice(["", "-"])
        out += [sign + format(exact, f".{digits}e") for digits in (8, 15, 16, 17, 18, 19, 22)]
        out += [sign + format(exact, "f"), sign + format(exact, "f") + "000001"]
    return out


def test_float4_reading_is_strtofs_rounding_or_nothing() -> None:
    """The front end's float4 reader (copyfields.js readFloat4, by its test export) against exact
    rounding: wherever it gives a value, that is strtof's; where it cannot be sure it gives none."""
    getcontext().prec = 120
    rnd = random.Random(3)
    texts = near_midpoints(rnd, 1500)
    for _ in range(3000):
        x = rnd.uniform(-2, 2) * 10 ** rnd.randint(-30, 30)
        texts += [repr(x), f"{x:.{rnd.randint(1, 25)}g}", f"{x:.{rnd.randint(0, 12)}f}"]
        texts.append(repr(struct.unpack("f", struct.pack("f", x))[0]) if abs(x) < 1e38 else "1")
    texts += ["16777217", "1.0000000596046448", "3.4028235e38", "3.4028236e38", "1e-38", "-0"]
    script = (
        "import('./src/copyfields.js').then((m) => {"
        " const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        " const out = texts.map((t) => { const f = m.float4OfBytes(t);"
        " return f === undefined ? null : Object.is(f, -0) ? '-0' : String(f); });"
        " process.stdout.write(JSON.stringify(out)); })"
    )
    install = locate()
    run = subprocess.run(
        [str(install.node), "-e", script],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        cwd=install.js_dir,
        timeout=60,
        check=True,
    )
    results = json.loads(run.stdout)
    wrong = [
        (t, r, exact_float4(t))
        for t, r in zip(texts, results, strict=True)
        if (r is not None and float(r) != exact_float4(t)) or (r == "-0" and not t.startswith("-"))
    ]
    assert not wrong, wrong[:5]
    given = [r for r in results if r is not None]
    assert len(given) > len(texts) // 2  # it reads most numbers itself
    # exact midpoints are left to PostgreSQL; the decimal just above one is read
    assert results[texts.index("16777217")] is None
    assert results[texts.index("1.0000000596046448")] is None
    assert results[texts.index("3.4028236e38")] is None  # overflow
    assert results[texts.index("1e-38")] is None  # subnormal


# ---- what stays text gives PostgreSQL's own result --------------------------------------------------


def test_types_and_options_it_does_not_convert(server: Server, table: str) -> None:
    with server.connect() as c:
        c.execute(
            "DROP DOMAIN IF EXISTS cc_posint; CREATE DOMAIN cc_posint AS int4 CHECK (VALUE > 0)"
        )
        c.execute(f"CREATE TABLE {table} (id int, ts timestamptz, d cc_posint, note text)")
    log = server.copy(f"COPY {table} (id, ts) FROM STDIN", [(1, "2026-01-02 03:04:05+00")])
    assert f"{KEPT} (column ts is type timestamptz)" in log
    log = server.copy(f"COPY {table} (id, d) FROM STDIN", [(2, 7)])
    assert f"{KEPT} (column d is type cc_posint)" in log
    log = server.copy(f"COPY {table} (id, note) FROM STDIN (FORMAT csv)", raw=b'3,"a,b"\n')
    assert KEPT in log
    # a \r makes the line end \r\n for PostgreSQL; an octal escape is PostgreSQL's to read
    log = server.copy(f"COPY {table} (id, note) FROM STDIN", raw=b"4\tcr\r\n5\t\\101\\x42\r\n")
    assert KEPT in log
    with server.connect() as c:
        rows = c.execute(f"SELECT id, ts::text, d, note FROM {table} ORDER BY id").fetchall()
    assert rows == [
        (1, "2026-01-02 03:04:05+00", None, None),
        (2, None, 7, None),
        (3, None, None, "a,b"),
        (4, None, None, "cr"),
        (5, None, None, "AB"),
    ]


def primary(exc: psycopg.Error) -> tuple[str | None, str | None]:
    return exc.sqlstate, exc.diag.message_primary


@pytest.mark.parametrize(
    ("vector", "sqlstate", "converted"),
    [
        ("[1,,2]", "22P02", False),  # malformed: PostgreSQL's own syntax error
        ("[NaN,1,2]", "22000", False),  # NaN not allowed in vector
        ("[1,2]", "22000", True),  # wrong dimension: vector_recv checks it as vector_in does
    ],
)
def test_vector_errors_are_postgresqls(
    server: Server, table: str, vector: str, sqlstate: str, converted: bool
) -> None:
    with server.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int, v vector(3))")
        with pytest.raises(psycopg.Error) as inserted:
            c.execute(f"INSERT INTO {table} VALUES (1, %s)", (vector,))
    with server.connect() as c:
        mark = server.mark()
        with pytest.raises(psycopg.Error) as copied:
            server.copy(f"COPY {table} FROM STDIN", [(1, "[1,2,3]"), (2, vector)], conn=c)
        assert primary(copied.value) == primary(inserted.value)
        assert copied.value.sqlstate == sqlstate
        assert (CONVERTED in server.log_since(mark)) is converted
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)  # usable after


def test_unknown_table_is_postgresqls_error(server: Server, table: str) -> None:
    with server.connect() as c:
        with pytest.raises(errors.UndefinedTable):
            server.copy(f"COPY {table} FROM STDIN", [(1,)], conn=c)
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_copy_failed_by_the_client(server: Server, table: str) -> None:
    with server.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int)")
        mark = server.mark()
        with pytest.raises(ZeroDivisionError), c.cursor().copy(f"COPY {table} FROM STDIN") as cp:
            cp.write_row((1,))
            1 / 0  # noqa: B018 - psycopg sends CopyFail
        assert f"{KEPT} (it did not end with CopyDone)" in server.log_since(mark)
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


# ---- transactions, constraints, the table as COPY sees it -------------------------------------------


def test_rollback_and_constraint_violation(server: Server, table: str) -> None:
    with server.connect() as c:
        c.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v vector(2))")
        c.autocommit = False
        log = server.copy(f"COPY {table} FROM STDIN", [(1, "[1,2]"), (2, "[3,4]")], conn=c)
        assert CONVERTED in log
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)
        c.rollback()
        c.autocommit = True
        assert c.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        c.execute(f"INSERT INTO {table} VALUES (2, '[0,0]')")
        mark = server.mark()
        with pytest.raises(errors.UniqueViolation):
            server.copy(f"COPY {table} FROM STDIN", [(1, "[1,2]"), (2, "[3,4]")], conn=c)
        assert CONVERTED in server.log_since(mark)
        assert c.execute(f"SELECT id, v::text FROM {table}").fetchall() == [(2, "[0,0]")]


def test_columns_as_copy_takes_them(server: Server, table: str) -> None:
    """Without a list: attnum order, dropped and generated columns left out; names found through the
    client's search_path; a quoted name; a last row without its newline, split across messages."""
    schema = f"{table}_s"
    with server.connect() as c:
        c.execute(f"CREATE SCHEMA {schema}")
        c.execute(
            f'CREATE TABLE {schema}."T t" (a int, gone text, "B" text, g int GENERATED ALWAYS AS'
            " (a * 2) STORED, v vector(2))"
        )
        c.execute(f'ALTER TABLE {schema}."T t" DROP COLUMN gone')
        c.execute(f"SET search_path = {schema}, public")
        log = server.copy('COPY "T t" FROM STDIN', raw=b"1\tx\t[1,2]\n2\t\\N\t[3,4]", conn=c)
        assert f'COPY "T t": 2 rows {CONVERTED}' in log
        log = server.copy('copy "T t" ("B", a) from stdin', [("y", 3)], conn=c)
        assert CONVERTED in log
        rows = c.execute('SELECT a, "B", g, v::text FROM "T t" ORDER BY a').fetchall()
    assert rows == [(1, "x", 2, "[1,2]"), (2, None, 4, "[3,4]"), (3, "y", 6, None)]
