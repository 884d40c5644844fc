"""`labeler calibrate` on a real store: a calibrator fitted on the reviews, stored as the model's
next version, every draft of that model and settings rescored with it; too few reviews or a dry
run change nothing."""

from __future__ import annotations

import json
import math
import random

import pytest
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from labeler.calibration import MIN_EXAMPLES, SIGNALS, Calibrator, draft_signals
from labeler.cli import app
from labeler.errors import InputError
from labeler.review.calibrate import calibrate
from labeler.store import calibrators as calibrator_store
from labeler.store.drafts import DraftFilter, iter_drafts
from labeler.store.models import (
    Caption,
    CaptionRun,
    Dataset,
    Image,
    Model,
    Review,
    StoredCalibrator,
)  # fmt: skip

IMAGES = 60
runner = CliRunner()


def _draft(rng: random.Random, image_id: int, model_id: int, settings_key: str, rank: int):
    n = rng.randint(3, 9)
    logprobs = [-rng.random() * rng.choice([0.3, 1.0, 2.5]) for _ in range(n)]
    total = math.fsum(logprobs)
    return {
        "image_id": image_id, "model_id": model_id, "settings_key": settings_key, "rank": rank,
        "text": f"draft {image_id} {rank}", "log_likelihood": total, "num_tokens": n,
        "confidence": math.exp(total / n), "score": total, "token_logprobs": logprobs,
        "margin": rng.random() * 2, "finished": rng.random() < 0.9,
        "repeated_ngram": rng.random() < 0.1, "has_unknown": False, "stale": image_id == IMAGES,
    }  # fmt: skip


@pytest.fixture
def drafted(store):
    """Two models; the first drafted with settings "k" (best and runner-up), then "other"."""
    rng = random.Random(7)
    with store.write() as session:
        session.add_all([Model(id=1, content_hash="a" * 64, name="m", family="show-tell"),
                         Model(id=2, content_hash="b" * 64, name="n", family="show-tell"),
                         Dataset(id=1, name="d", root="/d", root_raw=b"/d")])  # fmt: skip
        session.flush()
        session.add_all([
            CaptionRun(model_id=2, settings_key="k", settings={}, status="completed"),
            CaptionRun(model_id=1, settings_key="other", settings={}, status="completed"),
            CaptionRun(model_id=1, settings_key="k", settings={}, status="completed"),
        ])  # fmt: skip
        session.add_all(
            Image(id=i, dataset_id=1, path=f"{i}.jpg", path_raw=f"{i}.jpg".encode(), status="ok")
            for i in range(1, IMAGES + 1)
        )
        session.flush()
        rows = [
            _draft(rng, i, m, k, r)
            for i in range(1, IMAGES + 1)
            for m, k, r in ((1, "k", 0), (1, "k", 1), (1, "other", 0), (2, "k", 0))
        ]
        session.execute(Caption.__table__.insert(), rows)
    return store


def _review(store, count: int, *, skipped: int = 0) -> None:
    """Reviews of the first `count` images, accepted when the draft is likely enough (with
    some noise), and `skipped` more that must not count."""
    rng = random.Random(3)
    with store.session() as session:
        drafts = session.execute(
            select(Caption.image_id, Caption.id, Caption.log_likelihood)
            .where(Caption.model_id == 1, Caption.settings_key == "k", Caption.rank == 0)
            .order_by(Caption.image_id)
        ).all()
    with store.write() as session:
        for i, (image_id, caption_id, ll) in enumerate(drafts[: count + skipped]):
            if i >= count:
                outcome = "skipped"
            else:
                outcome = "accepted" if ll + rng.gauss(0, 1.5) > -5 else rng.choice(
                    ["edited", "rejected"]
                )  # fmt: skip
            session.add(Review(image_id=image_id, caption_id=caption_id, outcome=outcome,
                               fingerprint=f"r{image_id}"))  # fmt: skip


def _scores(store) -> list[tuple]:
    with store.session() as session:
        rows = session.execute(
            select(Caption.id, Caption.p_accept, Caption.calibrator_id).order_by(Caption.id)
        ).all()
    return [tuple(r) for r in rows]


def _signals(draft: Caption) -> list[float]:
    return draft_signals(
        draft.log_likelihood, draft.num_tokens, draft.token_logprobs, draft.margin,
        draft.finished, draft.repeated_ngram, draft.has_unknown,
    )  # fmt: skip


def test_a_refit_is_stored_and_rescores_every_draft_of_its_model_and_settings(drafted):
    _review(drafted, 50, skipped=5)
    result = calibrate(drafted, folds=4)
    assert (result.model, result.settings_key) == (f"m ({'a' * 12})", "k")
    assert result.examples == 50 and 5 <= result.positives <= 45  # skipped ones left out
    assert result.version == 1 and result.rescored == 2 * IMAGES  # both ranks, the stale one too
    assert set(result.signal_auroc) == {*SIGNALS, "confidence", "p_accept before"}
    assert result.auroc is not None and 0.5 < result.auroc <= 1 and result.ece is not None
    with drafted.session() as session:
        (stored,) = session.scalars(select(StoredCalibrator)).all()
        drafts = session.scalars(select(Caption).order_by(Caption.id)).all()
    assert (stored.model_id, stored.settings_key, stored.source) == (1, "k", "reviews")
    assert stored.examples == 50 and stored.auroc == result.auroc and stored.ece == result.ece
    calibrator = Calibrator.from_dict(stored.params)
    assert calibrator.criterion == "accepted unchanged" and calibrator.settings_key == "k"
    mine = [d for d in drafts if d.model_id == 1 and d.settings_key == "k"]
    others = [d for d in drafts if d not in mine]
    assert len(mine) == 2 * IMAGES and {d.calibrator_id for d in mine} == {stored.id}
    expected = calibrator.predict([_signals(d) for d in mine])
    assert [d.p_accept for d in mine] == pytest.approx(expected.tolist(), abs=1e-12)
    assert sum(d.p_accept != d.confidence for d in mine) == len(mine)
    assert all(d.p_accept == d.confidence and d.calibrator_id is None for d in others)
    # exports now rank by the new p_accept, worst first
    with drafted.session() as session:
        order = [r.p_accept for r in iter_drafts(session, DraftFilter(model="m"))]
    assert order == sorted(order) and len(order) == IMAGES - 1  # stale drafts are not exported
    again = calibrate(drafted, model="m", settings_key="k")
    assert again.version == 2
    assert {d[2] for d in _scores(drafted) if d[2] is not None} == {stored.id + 1}


def test_reviews_of_drafts_since_made_with_other_text_teach_nothing(drafted):
    """The caption job re-made the drafts of 20 reviewed images (the reviews lose caption_id),
    10 of them with the same text: a review counts for a draft it judged or for the same text
    (store/drafts.py), so the fit takes 40 examples, not the images' 50 newest reviews."""
    _review(drafted, 50)
    with drafted.write() as session:
        session.execute(
            update(Review).values(draft_text=select(Caption.text).where(
                Caption.id == Review.caption_id).scalar_subquery())
        )  # fmt: skip
        remade = range(1, 21)
        session.execute(delete(Caption).where(
            Caption.image_id.in_(remade), Caption.model_id == 1, Caption.settings_key == "k"
        ))  # fmt: skip
        rng = random.Random(11)
        rows = [_draft(rng, i, 1, "k", rank) for i in remade for rank in (0, 1)]
        for row in rows:
            row["text"] += " again" if row["image_id"] > 10 else ""
        session.execute(Caption.__table__.insert(), rows)
    with drafted.session() as session:
        assert set(session.scalars(select(Review.caption_id).where(Review.image_id <= 20))) == {
            None
        }
    result = calibrate(drafted, dry_run=True)
    assert result.examples == 40
    with drafted.session() as session:
        judged = DraftFilter(model="m", settings_key="k", review=["accepted", "edited", "rejected"])
        reviewed = {r.image_id for r in iter_drafts(session, judged)}
    assert reviewed == set(range(1, 11)) | set(range(21, 51))


def test_too_few_reviews_say_how_many_are_needed_and_change_nothing(drafted):
    _review(drafted, MIN_EXAMPLES - 1)
    before = _scores(drafted)
    done = runner.invoke(app, ["calibrate", "--db", drafted.url])
    assert done.exit_code == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"Error: too few judged drafts to calibrate: {MIN_EXAMPLES - 1} (")
    assert f"need at least {MIN_EXAMPLES}" in line and "Traceback" not in done.output
    assert _scores(drafted) == before
    with drafted.session() as session:
        assert session.scalars(select(StoredCalibrator)).all() == []


def test_a_dry_run_fits_and_stores_nothing(drafted):
    _review(drafted, 50)
    before = _scores(drafted)
    result = calibrate(drafted, dry_run=True)
    assert result.dry_run and result.version is None and result.rescored == 0
    assert result.examples == 50 and result.auroc is not None
    assert _scores(drafted) == before
    with pytest.raises(InputError, match="--folds must be at least 2"):
        calibrate(drafted, folds=1)
    with pytest.raises(InputError, match="no drafts from model nobody"):
        calibrate(drafted, model="nobody")


def test_the_calibrate_command(drafted):
    _review(drafted, 50)
    done = runner.invoke(app, ["calibrate", "--db", drafted.url, "--dry-run"])
    assert done.exit_code == 0, done.output
    assert "calibrator (cross-validated)" in done.stdout and "log_likelihood" in done.stdout
    assert "Dry run: nothing stored." in done.stdout
    done = runner.invoke(app, ["calibrate", "--db", drafted.url, "--folds", "3", "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["version"] == 1 and data["rescored"] == 2 * IMAGES and data["folds"] == 3
    assert data["examples"] == 50 and not data["dry_run"]
    done = runner.invoke(app, ["calibrate", "--db", drafted.url])
    assert done.exit_code == 0 and f"Stored as calibrator v2; p_accept of {2 * IMAGES}" in (
        done.stdout
    )
    stats = json.loads(runner.invoke(app, ["stats", "--db", drafted.url, "--json"]).stdout)
    assert [(u["version"], u["drafts"]) for u in stats["scored_by"]] == [(2, IMAGES - 1)]


def test_the_calibrator_for_a_settings_beats_one_for_any_settings_whatever_its_version(drafted):
    """A store that was calibrated before it kept checkpoints' calibrators: the checkpoint's,
    registered later, takes the next version, yet the refit for "k" still scores "k"."""
    _review(drafted, 50)
    calibrate(drafted)
    checkpoints = Calibrator(weights=[0.0] * len(SIGNALS), bias=0.0, mean=[0.0] * len(SIGNALS),
                             scale=[1.0] * len(SIGNALS))  # fmt: skip
    with drafted.write() as session:
        for _ in range(2):  # every caption run registers the model again: kept once
            calibrator_store.register_validation(session, model_id=1, calibrator=checkpoints)
    with drafted.session() as session:
        stored = session.execute(
            select(StoredCalibrator.id, StoredCalibrator.version, StoredCalibrator.source,
                   StoredCalibrator.settings_key).order_by(StoredCalibrator.version)
        ).all()  # fmt: skip
        assert [tuple(r)[1:] for r in stored] == [(1, "reviews", "k"), (2, "validation", None)]
        refit, validation = stored[0].id, stored[1].id
        assert calibrator_store.current(session, model_id=1, settings_key="k").calibrator_id == (
            refit
        )
        other = calibrator_store.current(session, model_id=1, settings_key="other")
        assert other.calibrator_id == validation and other.calibrator.bias == 0.0
        assert calibrator_store.current(session, model_id=2, settings_key="k") == (
            calibrator_store.Scoring()
        )


def test_a_refit_waits_for_caption_writes_and_they_for_it_on_postgresql(drafted):
    """The model's row is the meeting point (store/calibrators.py): caption writes share it, a
    refit holds it alone, so no batch is written with a calibrator a refit has replaced."""
    if drafted.is_sqlite:
        pytest.skip("SQLite serialises every writer already")
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    def attempt(exclusive: bool) -> bool:
        with drafted.write() as session:
            session.execute(text("SET LOCAL lock_timeout = '200ms'"))
            try:
                calibrator_store.lock_model(session, 1, exclusive=exclusive)
            except OperationalError:  # lock_timeout: it would have waited
                return False
            return True

    with drafted.write() as batch:
        calibrator_store.lock_model(batch, 1, exclusive=False)
        assert attempt(exclusive=False)  # another worker's batch goes ahead
        assert not attempt(exclusive=True)  # a refit waits
    with drafted.write() as refit:
        calibrator_store.lock_model(refit, 1, exclusive=True)
        assert not attempt(exclusive=False)  # batches wait for the refit
        refit.execute(Caption.__table__.insert(), [_draft(random.Random(1), 1, 1, "new", 0)])
