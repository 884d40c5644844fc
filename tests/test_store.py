"""The store: schema from the migrations, models matching them, engine settings, open errors."""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from labeler.errors import StoreError
from labeler.store import open_store, resolve_url
from labeler.store.engine import create_engine_for
from labeler.store.models import Base, Caption, Dataset, Image, Model, StoredCalibrator
from labeler.store.opening import alembic_config, backup_sqlite, head_revision

EXPECTED_COLUMNS = {
    "datasets": ["id", "name", "root", "root_raw", "created_at"],
    "images": [
        "id", "dataset_id", "path", "path_raw", "size", "mtime_ns", "content_hash", "format",
        "width", "height", "mode", "frames", "status", "reason", "first_seen_at", "scanned_at",
    ],
    "models": ["id", "content_hash", "name", "family", "source", "info", "registered_at"],
    "caption_runs": [
        "id", "model_id", "settings_key", "settings", "status", "host", "pid", "started_at",
        "finished_at", "counts", "timings", "error", "process_started",
    ],
    "captions": [
        "id", "image_id", "model_id", "settings_key", "run_id", "rank", "text",
        "log_likelihood", "num_tokens", "confidence", "score", "token_logprobs", "margin",
        "finished", "repeated_ngram", "has_unknown", "stale", "created_at", "p_accept",
        "calibrator_id",
    ],
    "calibrators": [
        "id", "model_id", "settings_key", "version", "source", "params", "auroc", "ece",
        "examples", "created_at",
    ],
    "reviews": [
        "id", "image_id", "caption_id", "text", "outcome", "reviewer", "reviewed_at", "source",
        "fingerprint", "imported_at", "draft_text", "external_id", "external_updated_at",
    ],
    "caption_claims": [
        "id", "model_id", "settings_key", "content_hash", "worker", "run_id", "claimed_at",
        "expires_at", "host", "pid", "process_started",
    ],
    "alembic_version": ["version_num"],
}  # fmt: skip


def test_empty_store_upgrades_to_the_exact_schema(store):
    inspector = inspect(store.engine)
    tables = {name: [c["name"] for c in inspector.get_columns(name)] for name in EXPECTED_COLUMNS}
    assert set(inspector.get_table_names()) == set(EXPECTED_COLUMNS)
    assert tables == EXPECTED_COLUMNS
    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()


def test_models_match_the_migrations(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_indexes_and_constraints_the_commands_rely_on(store):
    inspector = inspect(store.engine)
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("captions")}
    assert ("image_id", "model_id", "settings_key", "rank") in uniques
    indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("captions")}
    assert ("confidence",) in indexed
    assert ("model_id", "settings_key", "rank", "p_accept") in indexed
    foreign = {fk["name"]: fk for fk in inspector.get_foreign_keys("captions")}
    assert foreign["fk_captions_calibrator_id_calibrators"]["options"]["ondelete"] == "SET NULL"
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("calibrators")}
    assert ("model_id", "version") in uniques
    assert ("content_hash",) in {tuple(i["column_names"]) for i in inspector.get_indexes("images")}


def _image(session) -> Image:
    dataset = Dataset(name="d", root="/d", root_raw=b"/d")
    session.add(dataset)
    session.flush()
    image = Image(dataset_id=dataset.id, path="a.png", path_raw=b"a.png", status="ok")
    session.add(image)
    session.flush()
    return image


def _draft(image_id: int, model_id: int, rank: int = 0) -> Caption:
    return Caption(
        image_id=image_id, model_id=model_id, settings_key="k", rank=rank, text="a cat",
        log_likelihood=-1.5, num_tokens=3, confidence=0.6, score=-1.5,
        token_logprobs=[-0.5, -0.5, -0.5], margin=None, finished=True, repeated_ngram=False,
        has_unknown=False,
    )  # fmt: skip


def test_one_draft_per_image_model_settings_and_rank(store):
    with store.write() as session:
        image = _image(session)
        model = Model(content_hash="f" * 64, name="m", family="show-tell")
        session.add(model)
        session.flush()
        session.add_all([_draft(image.id, model.id, 0), _draft(image.id, model.id, 1)])
    with pytest.raises(IntegrityError), store.write() as session:
        session.add(_draft(image.id, model.id, 0))
    with store.session() as session:
        assert session.scalar(select(Caption.token_logprobs).where(Caption.rank == 1)) == [
            -0.5, -0.5, -0.5,
        ]  # fmt: skip
        assert len(session.scalars(select(Caption)).all()) == 2


def test_p_accept_defaults_to_confidence_and_outlives_its_calibrator(store):
    with store.write() as session:
        image = _image(session)
        model = Model(content_hash="e" * 64, name="m", family="show-tell")
        session.add(model)
        session.flush()
        calibrator = StoredCalibrator(model_id=model.id, version=1, source="validation",
                                      params={}, examples=0)  # fmt: skip
        session.add(calibrator)
        session.flush()
        plain = _draft(image.id, model.id, 0)  # written without p_accept: confidence stands in
        scored = _draft(image.id, model.id, 1)
        scored.p_accept, scored.calibrator_id = 0.25, calibrator.id
        session.add_all([plain, scored])
    with store.write() as session:
        session.delete(session.get(StoredCalibrator, calibrator.id))
    with store.session() as session:
        rows = session.execute(
            select(Caption.rank, Caption.p_accept, Caption.calibrator_id).order_by(Caption.rank)
        ).all()
    assert [tuple(r) for r in rows] == [(0, 0.6, None), (1, 0.25, None)]
    with pytest.raises(IntegrityError), store.write() as session:
        session.add(StoredCalibrator(model_id=model.id, version=1, source="guess", params={},
                                     examples=0))  # fmt: skip


def test_image_status_is_checked(store):
    with pytest.raises(IntegrityError), store.write() as session:
        image = _image(session)
        image.status = "fine"
        session.flush()


def test_a_failed_write_leaves_nothing_behind(store):
    with pytest.raises(RuntimeError), store.write() as session:
        _image(session)
        raise RuntimeError("killed mid-transaction")
    with store.session() as session:
        assert session.scalars(select(Dataset)).all() == []


def test_sqlite_runs_with_wal_foreign_keys_and_a_busy_timeout(tmp_path):
    store = open_store(tmp_path / "s.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000


def test_default_store_comes_from_the_environment_then_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELER_DB", str(tmp_path / "env.db"))
    assert resolve_url() == f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.delenv("LABELER_DB")
    assert resolve_url() == f"sqlite:///{tmp_path / 'labeler.db'}"
    assert resolve_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"


def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        open_store(bogus)
    assert bogus.read_text().startswith("these are my notes")


def test_a_store_in_a_missing_folder_gives_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nowhere" / "s.db")


def test_a_missing_store_is_an_error_when_it_may_not_be_created(tmp_path):
    with pytest.raises(StoreError, match=f"^no store at {tmp_path / 's.db'}: run labeler scan"):
        open_store(tmp_path / "s.db", create=False)
    assert not (tmp_path / "s.db").exists()
    open_store(tmp_path / "s.db").dispose()
    open_store(tmp_path / "s.db", create=False).dispose()


@pytest.mark.parametrize("url", ["postgresql://a:secret@[::1", "postgresql://a:secret@h:port/db"])
def test_a_url_that_does_not_parse_gives_a_clear_error_without_its_password(url):
    with pytest.raises(StoreError, match="^not a database path or URL: ") as caught:
        open_store(url)
    assert "secret" not in str(caught.value) and "a:***@" in str(caught.value)


def test_an_unreachable_server_gives_a_clear_error():
    with pytest.raises(StoreError, match="cannot open the store"):
        open_store("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")


def test_a_store_from_a_newer_labeler_is_refused(store):
    with store.write() as session:
        session.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="newer than this version"):
        open_store(store.url)


def test_backup_copies_every_row(tmp_path):
    store = open_store(tmp_path / "s.db")
    with store.write() as session:
        _image(session)
    with store.engine.connect() as conn:
        copy = backup_sqlite(conn, tmp_path / "s.db", "0001")
    assert copy.name.startswith("s.db.backup-0001-")
    rows = sqlite3.connect(copy).execute("SELECT path FROM images").fetchall()
    assert rows == [("a.png",)]


def _store_at(url: str, revision: str):
    engine = create_engine_for(resolve_url(url))
    with engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), revision)
    return engine


def test_a_store_from_0001_with_rows_upgrades_with_its_rows_intact(store_url, tmp_path):
    engine = _store_at(store_url, "0001")
    with engine.connect() as conn, conn.begin():
        conn.execute(
            text(
                "INSERT INTO datasets (id, name, root, root_raw, created_at) "
                "VALUES (1, 'd', '/d', :raw, CURRENT_TIMESTAMP)"
            ),
            {"raw": b"/d"},
        )
        conn.execute(
            text(
                "INSERT INTO images (id, dataset_id, path, path_raw, status, reason, "
                "first_seen_at, scanned_at) VALUES (7, 1, 'caf\\xe9.png', :raw, "
                "'unreadable', 'truncated', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"raw": b"caf\xe9.png"},
        )
        conn.execute(
            text(
                "INSERT INTO models (id, content_hash, name, family, registered_at) "
                "VALUES (3, :h, 'm', 'show-tell', CURRENT_TIMESTAMP)"
            ),
            {"h": "a" * 64},
        )
    engine.dispose()
    upgraded = open_store(store_url)
    with upgraded.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        rows = conn.execute(text("SELECT id, path, path_raw, status, reason FROM images")).all()
        assert [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows] == [
            (7, "caf\\xe9.png", b"caf\xe9.png", "unreadable", "truncated")
        ]
        assert conn.execute(text("SELECT content_hash FROM models")).scalar() == "a" * 64
        assert conn.execute(text("SELECT count(*) FROM caption_claims")).scalar() == 0
    upgraded.dispose()
    backups = list(tmp_path.glob("store.db.backup-0001-*"))
    if upgraded.is_sqlite:
        assert len(backups) == 1
        copy = sqlite3.connect(backups[0])
        assert copy.execute("SELECT id FROM images").fetchall() == [(7,)]
        assert copy.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]


def _insert_drafted_rows(conn) -> None:
    """A dataset, an image, a model, two drafts of it and a review naming the best one."""
    conn.execute(
        text(
            "INSERT INTO datasets (id, name, root, root_raw, created_at) "
            "VALUES (1, 'd', '/d', :raw, CURRENT_TIMESTAMP)"
        ),
        {"raw": b"/d"},
    )
    conn.execute(
        text(
            "INSERT INTO images (id, dataset_id, path, path_raw, status, first_seen_at, "
            "scanned_at) VALUES (7, 1, 'a.png', :raw, 'ok', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        ),
        {"raw": b"a.png"},
    )
    conn.execute(
        text(
            "INSERT INTO models (id, content_hash, name, family, registered_at) "
            "VALUES (3, :h, 'm', 'show-tell', CURRENT_TIMESTAMP)"
        ),
        {"h": "a" * 64},
    )
    for caption_id, rank, confidence in ((11, 0, 0.625), (12, 1, 0.3125)):
        conn.execute(
            text(
                "INSERT INTO captions (id, image_id, model_id, settings_key, rank, text, "
                "log_likelihood, num_tokens, confidence, score, token_logprobs, margin, "
                "finished, repeated_ngram, has_unknown, stale, created_at) VALUES (:id, 7, 3, "
                "'k', :rank, 'a cat', -1.5, 3, :confidence, -1.5, '[-0.5, -0.5, -0.5]', 0.25, "
                ":t, :f, :f, :f, CURRENT_TIMESTAMP)"
            ),
            {"id": caption_id, "rank": rank, "confidence": confidence, "t": True, "f": False},
        )
    conn.execute(
        text(
            "INSERT INTO reviews (id, image_id, caption_id, outcome, fingerprint, imported_at) "
            "VALUES (1, 7, 11, 'accepted', 'fp', CURRENT_TIMESTAMP)"
        )
    )


def test_a_store_from_0002_with_drafts_upgrades_with_p_accept_equal_to_confidence(store_url):
    engine = _store_at(store_url, "0002")
    with engine.connect() as conn, conn.begin():
        _insert_drafted_rows(conn)
    engine.dispose()
    upgraded = open_store(store_url)
    with upgraded.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        drafts = conn.execute(
            text("SELECT id, confidence, p_accept, calibrator_id FROM captions ORDER BY id")
        ).all()
        assert [tuple(r) for r in drafts] == [(11, 0.625, 0.625, None), (12, 0.3125, 0.3125, None)]
        # SQLite rebuilt the table: the review still names its draft, the checks still hold
        assert conn.execute(text("SELECT caption_id FROM reviews")).scalar() == 11
        assert conn.execute(text("SELECT count(*) FROM calibrators")).scalar() == 0
    with pytest.raises(IntegrityError), upgraded.write() as session:
        session.execute(text("UPDATE captions SET rank = -1 WHERE id = 12"))
    with pytest.raises(IntegrityError), upgraded.write() as session:
        session.execute(text("UPDATE captions SET p_accept = NULL WHERE id = 12"))
    upgraded.dispose()


def test_0003_downgrades_and_upgrades_again_with_its_rows(store_url):
    engine = _store_at(store_url, "0002")
    with engine.connect() as conn, conn.begin():
        _insert_drafted_rows(conn)
    with engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), "0003")
    with engine.connect() as conn, conn.begin():
        command.downgrade(alembic_config(conn), "0002")
    with engine.connect() as conn:
        columns = [c["name"] for c in inspect(conn).get_columns("captions")]
        assert "p_accept" not in columns and "calibrators" not in inspect(conn).get_table_names()
        assert conn.execute(text("SELECT caption_id FROM reviews")).scalar() == 11
    with engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), "head")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT p_accept FROM captions WHERE id = 11")).scalar() == 0.625
    engine.dispose()


def _insert_run_links(conn) -> None:
    """A caption run that made draft 11 and holds a claim, and an acceptance whose draft is gone."""
    conn.execute(
        text(
            "INSERT INTO caption_runs (id, model_id, settings_key, settings, status, started_at) "
            "VALUES (5, 3, 'k', '{}', 'running', CURRENT_TIMESTAMP)"
        )
    )
    conn.execute(text("UPDATE captions SET run_id = 5 WHERE id = 11"))
    conn.execute(
        text(
            "INSERT INTO caption_claims (id, model_id, settings_key, content_hash, worker, run_id, "
            "claimed_at, expires_at) VALUES (1, 3, 'k', :h, 'w', 5, CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP)"
        ),
        {"h": "b" * 64},
    )
    conn.execute(
        text(
            "INSERT INTO reviews (id, image_id, caption_id, text, outcome, fingerprint, "
            "imported_at) VALUES (2, 7, NULL, 'a dog', 'accepted', 'fp2', CURRENT_TIMESTAMP)"
        )
    )


def _run_links(conn) -> list[tuple]:
    return [
        conn.execute(text("SELECT run_id FROM captions WHERE id = 11")).scalar(),
        conn.execute(text("SELECT run_id FROM caption_claims WHERE id = 1")).scalar(),
        conn.execute(text("SELECT caption_id FROM reviews WHERE id = 1")).scalar(),
    ]


def test_0004_binds_reviews_to_their_draft_text_and_keeps_run_links(store_url):
    engine = _store_at(store_url, "0002")
    with engine.connect() as conn, conn.begin():
        _insert_drafted_rows(conn)
    with engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), "0003")
        _insert_run_links(conn)
    with engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), "0004")
    with engine.connect() as conn:
        # SQLite rebuilt caption_runs: the drafts and claims still name their run
        assert _run_links(conn) == [5, 5, 11]
        drafted = conn.execute(text("SELECT id, draft_text FROM reviews ORDER BY id")).all()
        assert [tuple(r) for r in drafted] == [(1, "a cat"), (2, "a dog")]
    with engine.connect() as conn, conn.begin():
        conn.execute(text("UPDATE caption_runs SET status = 'abandoned' WHERE id = 5"))
    with pytest.raises(IntegrityError), engine.connect() as conn, conn.begin():
        conn.execute(text("UPDATE caption_runs SET status = 'lost' WHERE id = 5"))
    with pytest.raises(IntegrityError), engine.connect() as conn, conn.begin():
        conn.execute(text("UPDATE reviews SET external_id = 'ls:1' WHERE id IN (1, 2)"))
    with engine.connect() as conn, conn.begin():
        command.downgrade(alembic_config(conn), "0003")
    with engine.connect() as conn:
        assert _run_links(conn) == [5, 5, 11]
        assert conn.execute(text("SELECT status FROM caption_runs")).scalar() == "failed"
        assert "draft_text" not in [c["name"] for c in inspect(conn).get_columns("reviews")]
    with engine.connect() as conn, conn.begin():
        command.upgrade(alembic_config(conn), "head")
    with engine.connect() as conn:
        assert _run_links(conn) == [5, 5, 11]
    engine.dispose()


def test_times_are_stored_and_read_back_as_utc_on_every_backend(store):
    two_hours_east = dt.timezone(dt.timedelta(hours=2))
    with store.write() as session:
        session.add(
            Dataset(
                id=1,
                name="d",
                root="/d",
                root_raw=b"/d",
                created_at=dt.datetime(2024, 5, 2, 11, 0, tzinfo=two_hours_east),
            )
        )
        session.add(
            Dataset(
                id=2, name="e", root="/e", root_raw=b"/e", created_at=dt.datetime(2024, 5, 2, 9, 0)
            )
        )  # naive: taken as UTC
    with store.session() as session:
        times = session.scalars(select(Dataset.created_at).order_by(Dataset.id)).all()
    nine_utc = dt.datetime(2024, 5, 2, 9, 0, tzinfo=dt.timezone.utc)
    assert times == [nine_utc, nine_utc]
    assert all(t.utcoffset() == dt.timedelta(0) for t in times)
