"""A caption run's session-level lock on PostgreSQL: held while the run lives, free once its
session ends, so anyone can tell a run whose worker (or machine) is gone.

The lock is an advisory lock keyed by the store's schema and the run's id, held on a connection
of its own (`RunSession`) from before the run's row is visible until after its last write. The
server frees it when the session ends: a worker killed, or its machine gone, lets it go as soon
as the server sees the connection drop. `session_gone` tests it without keeping it. Nothing of
this happens on SQLite, whose WAL mode needs every process on one host, where the process table
tells (caption/holders.py). PostgreSQL needs sessions of its own per client for the lock (a
pooler in transaction mode would share them).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session


def run_key(schema: str, run_id: int) -> int:
    """The advisory lock key of a run: stores in other schemas of one database have runs with
    the same ids, so the schema is part of it (a 64-bit hash; a collision only makes a dead run
    look alive until its lease ends)."""
    digest = hashlib.blake2b(f"labeler caption run {schema} {run_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def session_gone(session: Session, run_id: int) -> bool:
    """On PostgreSQL, whether the session that held run `run_id`'s lock has ended (the lock is
    free); taken and let go in one statement, so no error leaves it held. False elsewhere."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return False
    schema = connection.scalar(text("SELECT current_schema()"))
    return bool(
        connection.scalar(
            text(
                "SELECT CASE WHEN pg_try_advisory_lock(:key) THEN pg_advisory_unlock(:key) "
                "ELSE false END"
            ),
            {"key": run_key(schema, run_id)},
        )
    )


class RunSession:
    """A run's advisory lock on a connection of its own, on PostgreSQL (nothing elsewhere).

    `hold` is called in the transaction that creates the run, before it commits: nobody can see
    the run before its lock is held. The connection is in autocommit, so it is never left idle in
    a transaction for the run's whole life. `ping` raises when the session is gone (the server
    or the network dropped it): the run's claims are then free for others to take."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None
        self._key = 0

    def hold(self, run_id: int) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._connection = connection
        self._key = run_key(connection.scalar(text("SELECT current_schema()")), run_id)
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self._key})

    def ping(self) -> None:
        if self._connection is not None:
            self._connection.execute(text("SELECT 1"))

    def close(self) -> None:
        """Let the lock go; a connection that cannot say so is closed outright, which ends its
        session and the lock with it (it never goes back to the pool holding the lock)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        except Exception:
            connection.invalidate()
        finally:
            connection.close()
