"""The one place that turns a `--db` value into an engine and sessions.

A bare path (or nothing: `$LABELER_DB`, then `./labeler.db`) means a SQLite file; anything with
`://` is a SQLAlchemy URL, PostgreSQL through psycopg 3. SQLite runs in WAL mode with foreign keys
and a busy timeout, and SQLAlchemy, not the sqlite3 module, decides when transactions begin: the
module's own implicit transactions would leave DDL outside them and could not take the write lock
up front. Writers take it up front (`BEGIN IMMEDIATE`) so that two processes never deadlock by
both upgrading a read lock; readers stay deferred so a long export never blocks the workers.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from labeler.errors import StoreError

ENV_VAR = "LABELER_DB"
DEFAULT_DB = "labeler.db"
BUSY_TIMEOUT_S = 60


def resolve_url(db: str | os.PathLike[str] | None = None) -> str:
    """The SQLAlchemy URL for a `--db` value, `$LABELER_DB`, or the default file."""
    value = os.fspath(db) if db is not None else os.environ.get(ENV_VAR) or DEFAULT_DB
    if "://" not in value:
        return "sqlite:///" + str(Path(value).expanduser().resolve())
    for prefix in ("postgres://", "postgresql://"):
        if value.startswith(prefix):
            return "postgresql+psycopg://" + value[len(prefix) :]
    return value


def parse_url(url: str) -> URL:
    """The parsed URL; one that cannot be parsed is a StoreError naming it, password hidden."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # urllib and int() raise ValueError on a bad host/port
        shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
        raise StoreError(f"not a database path or URL: {shown}") from None


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    return parse_url(url).render_as_string(hide_password=True)


def read_only_error(url: str, exc: DBAPIError) -> StoreError | None:
    """The one-line error for a SQLite store that may not be written, or None for any other
    failure. SQLite says "attempt to write a readonly database" for a read-only file but only
    "unable to open database file" for a read-only folder (where WAL mode must create its
    `-wal` and `-shm` files), so the permissions decide the second case."""
    path, orig = sqlite_file(url), exc.orig
    if path is None or not isinstance(orig, sqlite3.Error):
        return None
    name = getattr(orig, "sqlite_errorname", "")
    readonly = name.startswith("SQLITE_READONLY")
    if not readonly and name != "SQLITE_CANTOPEN":
        return None
    if path.exists() and not os.access(path, os.W_OK):
        why = "the file's permissions do not allow writing"
    elif not os.access(path.parent, os.W_OK):
        why = f"its folder {path.parent} does not allow writing"
    elif readonly:
        why = str(orig)
    else:  # cannot open for another reason: not ours to name
        return None
    return StoreError(f"the store {path} is read-only: {why}")


def create_engine_for(url: str) -> Engine:
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        hint = " (install labeler[postgres])" if "psycopg" in str(exc) else ""
        raise StoreError(f"no driver for {display_url(url)}: {exc}{hint}") from None


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        immediate = conn.get_execution_options().get("labeler_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@dataclass
class Store:
    """An open store: its URL, engine and session factory."""

    url: str
    engine: Engine

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def session(self) -> Session:
        """A session for reading (or for writes that tolerate a retry)."""
        return self._sessions()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any exception. A
        store that may not be written is a StoreError saying so, whichever write finds out."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(labeler_write=True)
                with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                    yield session
        except DBAPIError as exc:
            read_only = read_only_error(self.url, exc)
            if read_only is None:
                raise
            raise read_only from None

    def dispose(self) -> None:
        self.engine.dispose()
