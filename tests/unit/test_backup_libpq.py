"""`allot backup` on PostgreSQL reaches the server the service reaches, as the service does:
the URL's query (a socket directory in ``?host=``, TLS settings) goes to ``pg_dump`` too; and
the password's file is made in the data directory, where a killed backup leaves it readable
by the service's account only, never in /tmp."""

from __future__ import annotations

import stat
from pathlib import Path

from allotment.db.backup import _libpq_environment, libpq_variables


def test_the_urls_query_says_where_and_how_to_connect() -> None:
    env = libpq_variables(
        "postgresql+asyncpg://allot@/allotment?host=/run/postgresql&port=5433"
        "&sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem&application_name=allot"
        "&prepared_statement_cache_size=0"
    )
    assert env == {
        "PGHOST": "/run/postgresql",
        "PGPORT": "5433",
        "PGUSER": "allot",
        "PGDATABASE": "allotment",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": "/etc/ssl/ca.pem",
        "PGAPPNAME": "allot",
    }


def test_asyncpgs_ssl_flag_and_several_hosts() -> None:
    env = libpq_variables("postgresql+asyncpg://u@/d?ssl=true&host=a&host=b")
    assert env["PGSSLMODE"] == "require"
    assert env["PGHOST"] == "a,b"
    assert libpq_variables("postgresql+asyncpg://u@h/d?ssl=verify-ca")["PGSSLMODE"] == "verify-ca"


def test_the_passfile_is_made_in_a_private_directory_and_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    url = "postgresql+asyncpg://allot:secret@/allotment?host=/run/postgresql"
    with _libpq_environment(url, data) as env:
        passfile = Path(env["PGPASSFILE"])
        assert passfile.parent.parent == data
        assert stat.S_IMODE(passfile.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        # libpq matches a socket connection by its directory.
        assert passfile.read_text() == "/run/postgresql:*:allotment:allot:secret\n"
        assert "secret" not in " ".join(env.values())
    assert not passfile.exists() and not passfile.parent.exists()
    assert list(data.iterdir()) == []
