"""Copies of the database that can be restored: SQLite's online backup, PostgreSQL's
``pg_dump``/``pg_restore``, and what a restored database must be told about the world.

A backup copies the database file as a whole (SQLite) or every table (``pg_dump``), so a
table added later is covered without a change here. SQLite's copy is taken with its online
backup API in one step: a read transaction on the live database, which in WAL mode never
blocks the service's writers, so the copy is exactly the database as one moment saw it. It
holds token hashes: it is made 0600 and checked (``PRAGMA integrity_check``) before it is
kept.

A restore keeps the database it replaces aside (renamed, never deleted): what ran after the
backup was taken is known only there and on the backends, and ``controller.restore`` reads it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, func, select, text
from sqlalchemy.engine import URL, make_url

from allotment.db.tables import WORKLOADS, Base, PolicyVersion
from allotment.domain.workloads import WorkloadState

__all__ = [
    "BackupError",
    "Summary",
    "aside_name",
    "backup_sqlite",
    "check_dump",
    "check_sqlite",
    "pg_dump",
    "pg_program",
    "pg_restore",
    "libpq_variables",
    "raise_workload_ids",
    "restore_sqlite",
    "sqlite_file",
    "summarise",
    "summarise_sqlite",
]


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Summary:
    """What a database holds, as a backup or restore reports it."""

    #: Workloads by status label ("running": 3); statuses with none are left out.
    workloads: Mapping[str, int] = field(default_factory=dict)
    #: Rows per table, every table of the schema (a new table appears without a change).
    rows: Mapping[str, int] = field(default_factory=dict)
    policy_versions: int = 0
    #: The largest workload id; None: no workload yet.
    newest_workload: int | None = None

    def describe(self) -> str:
        """One line for the administrator."""
        total = sum(self.workloads.values())
        by = ", ".join(f"{n} {s}" for s, n in self.workloads.items())
        newest = f", newest id {self.newest_workload}" if self.newest_workload is not None else ""
        return (
            f"{total} workloads ({by or 'none'}{newest}), "
            f"{self.policy_versions} policy versions, "
            f"{self.rows.get('memberships', 0)} memberships, {self.rows.get('users', 0)} users"
        )


def summarise(conn: Connection) -> Summary:
    """Count what ``conn``'s database holds."""
    by_status = {
        WorkloadState(s).label: n
        for s, n in conn.execute(
            select(WORKLOADS.c.status, func.count()).group_by(WORKLOADS.c.status)
        )
    }
    rows = {
        t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        for t in Base.metadata.sorted_tables
    }
    return Summary(
        workloads=dict(sorted(by_status.items(), key=lambda kv: WorkloadState.parse(kv[0]))),
        rows=rows,
        policy_versions=rows.get(PolicyVersion.__tablename__, 0),
        newest_workload=conn.execute(select(func.max(WORKLOADS.c.id))).scalar_one(),
    )


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database (or one in memory)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database)


# -- SQLite -----------------------------------------------------------------------------------


def _private_file(path: Path) -> None:
    """Create ``path`` empty, 0600, whatever the umask; refuse to replace anything."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        raise BackupError(f"{path} exists already; choose another file or remove it") from None
    except OSError as e:
        raise BackupError(f"cannot create {path}: {e.strerror}") from None
    os.chmod(path, 0o600)


def _copy(source: sqlite3.Connection, dest: Path) -> None:
    """``source`` into the new file ``dest``, in one step, then checked and made one file."""
    target = sqlite3.connect(dest)
    try:
        # pages=-1: one step, one read transaction. In steps, every write the service commits
        # meanwhile would start the copy again, and a busy service would never let it finish.
        source.backup(target, pages=-1)
        problems = [r[0] for r in target.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"the copy in {dest} is damaged: {'; '.join(problems[:5])}")
        # A file that stands alone: no -wal beside it to lose when it is moved.
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()


def backup_sqlite(database: Path, dest: Path) -> None:
    """Copy the live SQLite database ``database`` to ``dest`` (new, 0600) while the service
    keeps writing; raise BackupError when it cannot be read or the copy is damaged."""
    if not database.exists():
        raise BackupError(f"no database at {database}: is this the service's data directory?")
    _private_file(dest)
    try:
        # Not read-only: a WAL database opened read-only needs its -shm there already.
        source = sqlite3.connect(database, timeout=30)
        try:
            source.execute("PRAGMA busy_timeout=30000")
            _copy(source, dest)
        finally:
            source.close()
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def check_sqlite(path: Path) -> None:
    """Raise BackupError unless ``path`` is an intact Allotment database (a backup)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise BackupError(f"cannot open {path}: {e}") from None
    try:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise BackupError(f"{path} is not a SQLite database ({e})") from None
    finally:
        conn.close()
    if problems != ["ok"]:
        raise BackupError(f"{path} is damaged: {'; '.join(problems[:5])}")
    if not {"alembic_version", WORKLOADS.name} <= tables:
        raise BackupError(f"{path} is not an Allotment database (no workloads table)")


def aside_name(path: Path, stamp: str) -> Path:
    """Where a restore keeps the database it replaces: beside it, named by the time."""
    return path.with_name(f"{path.name}.before-restore-{stamp}")


def restore_sqlite(backup: Path, database: Path, stamp: str) -> Path | None:
    """Put a copy of ``backup`` in place of ``database``; the database replaced (with its
    WAL) is kept at ``aside_name(database, stamp)``, which is returned (None: there was none).

    The service must not be running (the caller holds the controller lock)."""
    check_sqlite(backup)
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    incoming = database.with_name(f"{database.name}.restoring")
    incoming.unlink(missing_ok=True)
    _private_file(incoming)
    try:
        source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        try:
            _copy(source, incoming)
        finally:
            source.close()
        with sqlite3.connect(incoming) as conn:  # the service's own mode
            conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    except BaseException:
        incoming.unlink(missing_ok=True)
        raise
    aside: Path | None = None
    if database.exists():
        aside = aside_name(database, stamp)
        with contextlib.suppress(sqlite3.Error):  # damaged: moved as it is, WAL and all
            conn = sqlite3.connect(database)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
        for suffix in ("-wal", "-shm", ""):  # the main file last: it names the others
            old = database.with_name(database.name + suffix)
            if old.exists():
                os.replace(old, aside.with_name(aside.name + suffix))
    # The service's file, not the restoring user's: owned as the one replaced (or the
    # directory) is, so a service running as its own account can open it.
    owner = (aside if aside is not None else database.parent).stat()
    with contextlib.suppress(PermissionError):  # not root: it is the restoring user's anyway
        os.chown(incoming, owner.st_uid, owner.st_gid)
    os.replace(incoming, database)
    return aside


def summarise_sqlite(path: Path) -> Summary:
    """What the SQLite file ``path`` (a backup) holds, read without changing a byte of it."""
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            return summarise(conn)
    finally:
        engine.dispose()


def raise_workload_ids(conn: Connection, floor: int) -> int:
    """Make the next workload id larger than ``floor`` and every id the table holds (ids are
    never handed out twice: they name run directories, groups and output files); returns the
    largest id now taken."""
    newest = conn.execute(select(func.max(WORKLOADS.c.id))).scalar_one() or 0
    floor = max(floor, int(newest))
    if floor == 0:
        return 0
    if conn.dialect.name == "sqlite":  # AUTOINCREMENT (migration 0006): sqlite_sequence
        seen = conn.execute(
            text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": WORKLOADS.name}
        ).scalar_one_or_none()
        if seen is None:
            conn.execute(
                text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :n)"),
                {"t": WORKLOADS.name, "n": floor},
            )
        elif int(seen) < floor:
            conn.execute(
                text("UPDATE sqlite_sequence SET seq = :n WHERE name = :t"),
                {"t": WORKLOADS.name, "n": floor},
            )
        return max(floor, int(seen or 0))
    sequence = conn.execute(
        text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": WORKLOADS.name}
    ).scalar_one()
    taken = conn.execute(
        text(f"SELECT last_value, is_called FROM {sequence}")  # a name PostgreSQL gave
    ).one()
    if taken.is_called and int(taken.last_value) >= floor:
        return int(taken.last_value)
    conn.execute(text("SELECT setval(:s, :n, true)"), {"s": sequence, "n": floor})
    return floor


# -- PostgreSQL ---------------------------------------------------------------------------------


def pg_program(name: str) -> str | None:
    """``pg_dump`` or ``pg_restore``: on PATH, else Debian's newest (``/usr/lib/postgresql/
    <version>/bin``, not on PATH there); None when neither is installed."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


#: The URL's query parameters that say where and how to connect, and the libpq variable of
#: each (asyncpg's and libpq's spellings): a server reached through ``?host=`` (a socket
#: directory) or with ``?sslmode=verify-full`` is reached the same way by ``pg_dump``.
#: Parameters of the driver alone (``prepared_statement_cache_size``…) are not libpq's.
LIBPQ_PARAMETERS = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "ssl": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "sslcompression": "PGSSLCOMPRESSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "requirepeer": "PGREQUIREPEER",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "service": "PGSERVICE",
}
#: asyncpg's ``ssl=`` as a boolean, in libpq's words.
_SSL_WORDS = {"true": "require", "1": "require", "false": "disable", "0": "disable"}


def _passfile_line(u: URL, host: str | None = None) -> str:
    """One passfile line for ``u``; ``host``: where libpq connects, when the query says
    (several hosts, or a socket directory: ``*`` matches any)."""

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace(":", "\\:")

    where = (u.host or "*") if host is None else ("*" if "," in host else host)
    return (
        ":".join(esc(str(v)) for v in (where, u.port or "*", u.database or "*", u.username or "*"))
        + f":{esc(u.password or '')}\n"
    )


def libpq_variables(url: str) -> dict[str, str]:
    """The PG* variables that make a libpq program reach ``url``'s database as the service
    does: host, port, user and database, and the query's ``LIBPQ_PARAMETERS`` (they win over
    the URL's host and port, as they do for the driver). Never the password."""
    u = make_url(url)
    env: dict[str, str] = {}
    for var, value in (
        ("PGHOST", u.host),
        ("PGPORT", u.port),
        ("PGUSER", u.username),
        ("PGDATABASE", u.database),
    ):
        if value is not None:
            env[var] = str(value)
    for key, values in u.query.items():
        found = LIBPQ_PARAMETERS.get(key)
        if found is None:
            continue
        joined = ",".join([values] if isinstance(values, str) else values)
        if key == "ssl":
            joined = _SSL_WORDS.get(joined.lower(), joined)
        env[found] = joined
    return env


@contextlib.contextmanager
def _libpq_environment(url: str, private: Path) -> Iterator[dict[str, str]]:
    """The environment for a libpq program to reach ``url``'s database (``libpq_variables``);
    the password in a passfile of mode 0600 in a directory of mode 0700 made in ``private``
    (the data directory, which only the service's account can enter: a process killed before
    it removes the file leaves it there, not in /tmp), removed after, so it is never on a
    command line (``ps``) nor in this process's environment."""
    u = make_url(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(libpq_variables(url))
    if u.password is None:
        yield env
        return
    private.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory = Path(tempfile.mkdtemp(prefix=".pgpass-", dir=private))  # 0700
    name = directory / "passfile"
    try:
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_passfile_line(u, env.get("PGHOST")))
        env["PGPASSFILE"] = str(name)
        yield env
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run(program: str, args: list[str], url: str, what: str, private: Path) -> None:
    found = pg_program(program)
    if found is None:
        raise BackupError(
            f"{program} is not installed (Debian: apt-get install postgresql-client); "
            "see docs/backup.md for doing it by hand"
        )
    with _libpq_environment(url, private) as env:
        done = subprocess.run(
            [found, *args], env=env, capture_output=True, text=True, timeout=24 * 3600
        )
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {done.stderr.strip()[-2000:]}")


def pg_dump(url: str, dest: Path, private: Path) -> None:
    """``pg_dump -Fc`` of ``url``'s database to ``dest`` (new, 0600): one consistent snapshot,
    taken while the service runs. ``private``: where the passfile is made (``_run``)."""
    _private_file(dest)
    try:
        _run(
            "pg_dump",
            ["--format=custom", "--no-password", f"--file={dest}"],
            url,
            "pg_dump",
            private,
        )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


async def pg_set_aside(url: str, stamp: str) -> str:
    """Rename ``url``'s database aside (``<name>_before_restore_<stamp>``) and create an empty
    one in its place, owned by the same role; returns the URL of the one set aside. Needs a
    role that may create databases, and no session on the database (the service stopped)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    u = make_url(url)
    name = u.database or ""
    aside = f"{name[: 63 - 16 - len(stamp)]}_before_restore_{stamp}"
    admin = create_async_engine(
        u.set(drivername="postgresql+asyncpg", database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        async with admin.connect() as conn:
            owner = (
                await conn.execute(
                    text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :n"),
                    {"n": name},
                )
            ).scalar_one_or_none()
            if owner is None:
                raise BackupError(f"there is no database {name!r} at {u.host}")

            def quoted(identifier: str) -> str:
                return '"' + identifier.replace('"', '""') + '"'

            try:
                await conn.execute(text(f"ALTER DATABASE {quoted(name)} RENAME TO {quoted(aside)}"))
            except Exception as e:  # in use, or not allowed: said as PostgreSQL says it
                raise BackupError(
                    f"cannot set database {name!r} aside: {getattr(e, 'orig', e)}"
                ) from None
            await conn.execute(
                text(f"CREATE DATABASE {quoted(name)} OWNER {quoted(owner)} TEMPLATE template0")
            )
    finally:
        await admin.dispose()
    return u.set(database=aside).render_as_string(hide_password=False)


def check_dump(dump: Path) -> None:
    """Raise BackupError unless ``dump`` is a ``pg_dump -Fc`` archive (checked before anything
    is set aside)."""
    if not dump.is_file():
        raise BackupError(f"no backup at {dump}")
    found = pg_program("pg_restore")
    if found is None:
        raise BackupError(
            "pg_restore is not installed (Debian: apt-get install postgresql-client); "
            "see docs/backup.md for doing it by hand"
        )
    listed = subprocess.run(
        [found, "--list", str(dump)], capture_output=True, text=True, timeout=600
    )
    if listed.returncode != 0 or "TABLE DATA public workloads" not in listed.stdout:
        raise BackupError(
            f"{dump} is not a pg_dump archive of an Allotment database "
            f"({listed.stderr.strip()[-300:] or 'it has no workloads table'}); "
            "`allot backup` makes one"
        )


def pg_restore(dump: Path, url: str, private: Path) -> None:
    """``pg_restore`` of a ``pg_dump -Fc`` file into ``url``'s database, which must be empty;
    in one transaction: all of it or nothing. ``private``: where the passfile is made."""
    if not dump.is_file():
        raise BackupError(f"no backup at {dump}")
    _run(
        "pg_restore",
        [
            "--no-password",
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            f"--dbname={make_url(url).database}",
            str(dump),
        ],
        url,
        "pg_restore",
        private,
    )
