"""Properties over arbitrary input: config parsing only ever fails with ConfigError, and no
password ever shows up in a message."""

from __future__ import annotations

from pathlib import Path

from hypothesis import assume, given
from hypothesis import strategies as st

from hive_bridge.config import load_settings, mask_url, parse_database_url, parse_dotenv
from hive_bridge.errors import ConfigError

SECRET = st.text(
    alphabet=st.characters(blacklist_characters="@/?#:\n\r", blacklist_categories=("Cs",)),
    min_size=8,
    max_size=30,
).filter(lambda s: s.strip() == s and "***" not in s)


@given(st.text(max_size=80))
def test_any_url_parses_or_raises_config_error(url: str) -> None:
    try:
        target = parse_database_url(url, cwd=Path("/app"))
    except ConfigError as exc:
        assert "HIVE_DATABASE_URL" in str(exc)  # noqa: PT017
    else:
        assert target.backend in ("pglite", "sqlite", "postgresql")


@given(
    scheme=st.sampled_from(["postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg"]),
    password=SECRET,
    tail=st.sampled_from(["", "/", ":notaport/db", "/db?sslmode=require"]),
    backend=st.sampled_from(["pglite", "sqlite", "postgresql"]),
)
def test_password_never_in_messages(scheme: str, password: str, tail: str, backend: str) -> None:
    def message(secret: str) -> str | None:
        try:
            load_settings(
                {
                    "HIVE_DATABASE_URL": f"{scheme}://user:{secret}@db.example{tail}",
                    "HIVE_DATABASE_BACKEND": backend,
                },
                cwd=Path("/app"),
                dotenv=False,
            )
        except ConfigError as exc:
            return str(exc)
        return None

    url = f"{scheme}://user:{password}@db.example{tail}"
    assert password not in mask_url(url)
    # a password that coincides with the fixed text of a message ("hive-bri" is in "hive-bridge")
    # proves nothing either way
    assume(password not in (message("p4ssw0rd-other") or "hive-bridge: "))
    shown = message(password)
    assert shown is None or password not in shown


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), SECRET, max_size=5))
def test_dotenv_round_trip(values: dict[str, str]) -> None:
    text = "\n".join(f"{k}='{v}'" for k, v in values.items() if "'" not in v)
    expected = {k: v for k, v in values.items() if "'" not in v}
    assert parse_dotenv(text) == expected
