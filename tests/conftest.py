"""Shared fixtures: no test touches the user's files or store; store tests run on every backend.

`store` is parametrised over SQLite and, when `LABELER_TEST_POSTGRES_URL` is set (CI sets it),
over the real PostgreSQL server: the session creates a fresh database on that server and drops it
at the end, each test gets its own schema. An unreachable server fails the tests; it never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from backends import POSTGRES_ENV, backends
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch) -> None:
    """Run every test in its own folder with its own default store, home and caches: nothing a
    test does reads or writes the user's files, and nothing the user has changes a test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABELER_DB", str(tmp_path / "labeler.db"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, folder in (("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"),
                         ("XDG_DATA_HOME", "data"), ("HF_HOME", "hf-home"),
                         ("HF_DATASETS_CACHE", "hf-datasets")):  # fmt: skip
        monkeypatch.setenv(name, str(tmp_path / "home" / folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _admin_url() -> str:
    url = os.environ[POSTGRES_ENV]
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    return url


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database on the test server for this run, dropped at the end."""
    admin = make_url(_admin_url())
    name = f"labeler_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:  # fails loudly when the server is unreachable
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def store_url(request) -> Iterator[str]:
    """A URL for an empty store on the backend this test is parametrised with."""
    if request.param == "sqlite":
        yield str(request.getfixturevalue("tmp_path") / "store.db")
        return
    database = request.getfixturevalue("postgres_database")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(database).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def pytest_generate_tests(metafunc) -> None:
    if "store_url" in metafunc.fixturenames:
        metafunc.parametrize("store_url", backends(), indirect=True)


@pytest.fixture
def store(store_url):
    from labeler.store import open_store

    opened = open_store(store_url)
    yield opened
    opened.dispose()
