"""Plain-SQL dumps (pg_dump's plain format) as a sequence of statements, and what older servers need.

:func:`split_script` cuts a script into statements the way psql would: ``;`` ends a statement
outside quotes, dollar quotes and comments; ``COPY … FROM stdin;`` is followed by its data up to the
``\\.`` line; a line starting with ``\\`` between statements is a psql meta-command.

PostgreSQL 18's pg_dump writes a few things an older server rejects. :func:`compat_text` rewrites
a dump so PostgreSQL 15 or newer loads it, and :func:`skip_reason` drops the same statements while
loading:

- ``SET transaction_timeout = 0;`` (a setting PostgreSQL 17 introduced): removed;
- ``\\restrict`` / ``\\unrestrict`` (psql meta-commands of pg_dump 17.6+/15.14+): ignored by the
  loader, which is not psql;
- ``COMMENT ON EXTENSION``: skipped by the loader (it needs ownership of the extension, which an
  administrator may have created beforehand on a managed server; the comment is the extension's own).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "ScriptError",
    "Statement",
    "compat_text",
    "copy_rows",
    "data_table",
    "skip_reason",
    "split_script",
]


@dataclass(frozen=True)
class Statement:
    """One statement (``sql`` ends with ``;``), or a psql meta-command (``meta``), with its line."""

    sql: str
    line: int
    copy_data: str | None = None  # COPY … FROM stdin: the data lines, without the \. line
    meta: bool = False


class ScriptError(ValueError):
    """The script cannot be split (an unterminated quote or COPY block)."""


_SPECIAL = re.compile(r"""['";$\\]|--|/\*""")
_PLAIN_STRING = re.compile(r"[^']*(?:''[^']*)*'")
_ESCAPE_STRING = re.compile(r"(?:[^'\\]|\\.|'')*'", re.DOTALL)
_QUOTED_IDENT = re.compile(r'[^"]*(?:""[^"]*)*"')
_COMMENT_EDGE = re.compile(r"/\*|\*/")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][\w\x80-\uffff]*)?\$")
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z))*")
_COPY_FROM_STDIN = re.compile(r"\ACOPY\s+(.+?)\s.*\bFROM\s+stdin\b", re.IGNORECASE | re.DOTALL)
_DATA_TARGET = re.compile(r"\A(?:INSERT\s+INTO|COPY)\s+((?:\"(?:[^\"]|\"\")*\"|[^\s(\"])+)", re.I)
_TRANSACTION_TIMEOUT = re.compile(r"^SET transaction_timeout = [^;\n]*;$", re.MULTILINE)


def _ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$" or ord(ch) >= 0x80


def strip_leading_comments(sql: str) -> str:
    return sql[_LEADING_COMMENTS.match(sql).end() :]  # type: ignore[union-attr]


def _line_of(text: str, pos: int, cache: list[int]) -> int:
    # cache = [last pos, last line]: lines are counted incrementally, the script is read forward
    last_pos, last_line = cache
    line = last_line + text.count("\n", last_pos, pos)
    cache[0], cache[1] = pos, line
    return line


def split_script(text: str) -> Iterator[Statement]:
    """The statements of a plain SQL script, in order (comments before a statement kept in it)."""
    pos = start = 0
    lines = [0, 1]
    n = len(text)
    while True:
        m = _SPECIAL.search(text, pos)
        if m is None:
            rest = strip_leading_comments(text[start:])
            if rest.strip():
                yield Statement(sql=rest, line=_line_of(text, start, lines))
            return
        tok, i = m.group(), m.start()
        if tok == "'":
            escaped = i > 0 and text[i - 1] in "eE" and (i < 2 or not _ident_char(text[i - 2]))
            q = (_ESCAPE_STRING if escaped else _PLAIN_STRING).match(text, i + 1)
            if q is None:
                raise ScriptError(f"unterminated string at line {_line_of(text, i, lines)}")
            pos = q.end()
        elif tok == '"':
            q = _QUOTED_IDENT.match(text, i + 1)
            if q is None:
                raise ScriptError(f"unterminated quoted name at line {_line_of(text, i, lines)}")
            pos = q.end()
        elif tok == "$":
            d = _DOLLAR_TAG.match(text, i)
            if d is None or (i > 0 and _ident_char(text[i - 1])):
                pos = i + 1
            else:
                end = text.find(d.group(), d.end())
                if end < 0:
                    raise ScriptError(
                        f"unterminated {d.group()} quote at line {_line_of(text, i, lines)}"
                    )
                pos = end + len(d.group())
        elif tok == "--":
            nl = text.find("\n", i)
            pos = n if nl < 0 else nl + 1
        elif tok == "/*":
            depth, pos = 1, i + 2
            while depth:
                c = _COMMENT_EDGE.search(text, pos)
                if c is None:
                    raise ScriptError(f"unterminated comment at line {_line_of(text, i, lines)}")
                depth += 1 if c.group() == "/*" else -1
                pos = c.end()
        elif tok == "\\":
            at_line_start = i == 0 or text[i - 1] == "\n"
            if at_line_start and not strip_leading_comments(text[start:i]).strip():
                nl = text.find("\n", i)
                end = n if nl < 0 else nl
                yield Statement(sql=text[i:end], line=_line_of(text, i, lines), meta=True)
                pos = start = end + 1
            else:
                pos = i + 1
        else:  # ";"
            sql = strip_leading_comments(text[start : i + 1])
            line = _line_of(text, i, lines)
            pos = start = i + 1
            if _COPY_FROM_STDIN.match(sql):
                nl = text.find("\n", i)
                data_start = n if nl < 0 else nl + 1
                if text.startswith("\\.", data_start):
                    data, end = "", data_start + 2
                else:
                    k = text.find("\n\\.", data_start - 1)
                    if k < 0:
                        raise ScriptError(f"COPY data not ended by \\. (from line {line})")
                    data, end = text[data_start : k + 1], k + 3
                if text.startswith("\r\n", end):
                    end += 2
                elif text.startswith("\n", end):
                    end += 1
                yield Statement(sql=sql, line=line, copy_data=data)
                pos = start = end
            else:
                yield Statement(sql=sql, line=line)


def data_table(sql: str) -> str | None:
    """The table an ``INSERT INTO``/``COPY`` statement fills (as written, e.g. ``public.knowledge``)."""
    m = _DATA_TARGET.match(sql)
    return m.group(1) if m else None


def copy_rows(stmt: Statement) -> int:
    """How many rows a data statement carries (pg_dump's layouts: COPY lines, multi-row INSERT)."""
    if stmt.copy_data is not None:
        return stmt.copy_data.count("\n")
    return max(1, stmt.sql.count("\n\t("))


def skip_reason(stmt: Statement, server_major: int) -> str | None:
    """Why the loader leaves out ``stmt`` on a server of ``server_major``; None to run it."""
    if stmt.meta:
        word = stmt.sql.split()[0] if stmt.sql.split() else stmt.sql
        if word in ("\\restrict", "\\unrestrict"):
            return "psql meta-command"
        raise ScriptError(
            f"line {stmt.line}: psql meta-command {word} is not supported (only plain pg_dump "
            "scripts are); load it with psql instead"
        )
    if server_major < 17 and _TRANSACTION_TIMEOUT.match(stmt.sql.strip()):
        return "transaction_timeout exists from PostgreSQL 17 on"
    if stmt.sql.upper().startswith("COMMENT ON EXTENSION "):
        return "needs ownership of the extension"
    return None


def compat_text(text: str) -> str:
    """``text`` (a pg_dump 18 plain script) made loadable by PostgreSQL 15 and newer, psql included."""
    return _TRANSACTION_TIMEOUT.sub(
        "-- SET transaction_timeout = 0; (removed by hive-bridge: PostgreSQL 17+ only)", text
    )
