"""Opening a store brings it to the newest schema, safely.

The schema only changes through the numbered Alembic migrations in `migrations/` (shipped inside
the wheel as `labeler/migrations`). Before a SQLite file that already holds a schema is upgraded,
a consistent copy is written next to it with SQLite's backup API (safe under WAL). Several
processes may open one store at once, so the check-and-upgrade happens under the database's
write lock (`BEGIN IMMEDIATE` on SQLite, an advisory lock on PostgreSQL) and the second process
finds the work already done.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError

from labeler.errors import StoreError
from labeler.store.engine import (
    Store,
    create_engine_for,
    display_url,
    read_only_error,
    resolve_url,
    sqlite_file,
)

_PG_LOCK_KEY = 0x6C6162656C6572  # "labeler": serialises upgrades between processes


def migrations_dir() -> Path:
    """Inside an installed wheel, then at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StoreError(f"the schema migrations are missing from {package}; reinstall labeler")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def open_store(
    db: str | os.PathLike[str] | None = None, *, upgrade: bool = True, create: bool = True
) -> Store:
    """Open the store and upgrade it to the newest schema. A SQLite file that does not exist
    is created, or with `create=False` (commands that only read) a StoreError, so that a
    mistyped `--db` never leaves an empty store behind."""
    url = resolve_url(db)
    path = sqlite_file(url)
    if path is not None and not create and not path.exists():
        raise StoreError(f"no store at {path}: run labeler scan first")
    if path is not None and not path.parent.is_dir():
        raise StoreError(f"cannot create the store {path}: folder {path.parent} does not exist")
    store = Store(url=url, engine=create_engine_for(url))
    try:
        if upgrade:
            _upgrade(store, path)
    except (OperationalError, DBAPIError) as exc:
        store.dispose()
        read_only = read_only_error(url, exc)
        if read_only is not None:
            raise read_only from None
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StoreError(f"cannot open the store {display_url(url)}: {reason}") from None
    except Exception:
        store.dispose()
        raise
    return store


def _upgrade(store: Store, path: Path | None) -> None:
    head = head_revision()
    with store.engine.connect() as conn:
        if current_revision(conn) == head:
            return
    with store.engine.connect() as conn:
        conn = conn.execution_options(labeler_write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            current = current_revision(conn)
            if current == head:
                return
            scripts = ScriptDirectory.from_config(alembic_config())
            known = {script.revision for script in scripts.walk_revisions()}
            if current is not None and current not in known:
                raise StoreError(
                    f"the store {display_url(store.url)} has schema revision {current}, newer "
                    "than this version of labeler knows; upgrade labeler"
                )
            if path is not None and current is not None:
                backup_sqlite(conn, path, current)
            command.upgrade(alembic_config(conn), "head")


def backup_sqlite(conn: Connection, path: Path, revision: str) -> Path:
    """Copy the SQLite file next to itself before its schema changes."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.backup-{revision}-{stamp}")
    source = sqlite3.connect(str(path), timeout=60)
    try:
        dest = sqlite3.connect(str(target))
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    del conn  # the upgrading connection holds the write lock; readers may still copy
    return target
