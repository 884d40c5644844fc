"""The store backends the suite runs on: SQLite always, PostgreSQL when CI names a server.

A module of its own so that test files can import it (each tests/ folder has a conftest, so
`conftest` is not importable by name)."""

from __future__ import annotations

import os

POSTGRES_ENV = "LABELER_TEST_POSTGRES_URL"


def backends() -> list[str]:
    return ["sqlite", "postgres"] if os.environ.get(POSTGRES_ENV) else ["sqlite"]
