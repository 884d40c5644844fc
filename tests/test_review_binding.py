"""Reviews are bound to the drafts they judged (issue 11): a review counts for the draft it was
made on, and for a later draft of the image only when its text is the same; otherwise the new
draft is unreviewed. Stats, exports and their review filter, calibrate and the report follow that
rule; training takes each image's newest review's own text, never the current draft's.

The scenario of the issue, on a real store: drafts from a tiny real model, every one accepted,
the drafts re-made by the caption job (same text, the reviews' caption_id lost), then drafts with
other decoding settings that give the same text for some images and other text for the rest."""

from __future__ import annotations

import datetime as dt
import json
import re

import imagefactory as make
import pandas as pd
import pytest
from captionkit import tiny_checkpoint
from sqlalchemy import select, update
from typer.testing import CliRunner

from labeler.caption.job import caption_images
from labeler.cli import app
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.review import calibrate as calibrate_module
from labeler.review.importer import import_reviews
from labeler.review.report import write_report
from labeler.review.stats import compute_stats, signals
from labeler.store import drafts as exports
from labeler.store.drafts import DraftFilter, iter_drafts
from labeler.store.models import Caption, CaptionRun, Image, Review
from labeler.training.store_reader import read_reviewed

IMAGES = 8
FIRST = DecodeSettings(beam_size=3, max_len=8)
SECOND = DecodeSettings(beam_size=2, max_len=8)  # same text as FIRST for some images, not all


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    return ShowTellCaptioner.from_checkpoint(path, device="cpu")


class Redrafted:
    """The store after the issue's scenario, and what each image's drafts say."""

    def __init__(self, store) -> None:
        self.store = store
        with store.session() as session:
            runs = session.scalars(select(CaptionRun.settings_key).order_by(CaptionRun.id))
            self.first_key, *_, self.second_key = list(dict.fromkeys(runs))
            drafts = session.execute(
                select(Caption.settings_key, Caption.image_id, Caption.text)
                .where(Caption.rank == 0)
            ).all()  # fmt: skip
        self.first = {i: t for k, i, t in drafts if k == self.first_key}
        self.second = {i: t for k, i, t in drafts if k == self.second_key}
        self.same = {i for i in self.second if self.second[i] == self.first[i]}
        self.different = set(self.second) - self.same

    def rows(self, **filters) -> dict:
        with self.store.session() as session:
            return {r.image_id: r for r in iter_drafts(session, DraftFilter(**filters))}


@pytest.fixture
def redrafted(store, tmp_path, captioner) -> Redrafted:
    make.write_many(tmp_path / "photos", IMAGES, size=(48, 40))
    scan(store, [tmp_path / "photos"], workers=0)
    caption_images(store, captioner, settings=FIRST, workers=0, procs=0, batch_size=4)
    lines = [json.dumps({"image_id": i, "outcome": "accepted"}) for i in _image_ids(store)]
    (tmp_path / "accepted.jsonl").write_text("\n".join(lines) + "\n")
    assert import_reviews(store, tmp_path / "accepted.jsonl", reviewer="ana").added == IMAGES
    with store.write() as session:  # as older imports left an acceptance: no text of its own
        session.execute(update(Review).values(text=None))
    caption_images(store, captioner, settings=FIRST, workers=0, procs=0, recaption=True)
    caption_images(store, captioner, settings=SECOND, workers=0, procs=0, batch_size=4)
    with store.session() as session:  # the drafts were re-made: only draft_text binds them
        assert set(session.scalars(select(Review.caption_id))) == {None}
    found = Redrafted(store)
    assert found.same and found.different, "the settings no longer give both cases"
    return found


def _image_ids(store) -> list[int]:
    with store.session() as session:
        return sorted(session.scalars(select(Caption.image_id).where(Caption.rank == 0)))


def test_stats_count_no_acceptance_for_new_drafts_with_other_text(redrafted):
    stats = compute_stats(redrafted.store)  # the newest run's settings: SECOND
    assert stats.settings_key == redrafted.second_key and stats.drafts == IMAGES
    assert sum(b.reviewed for b in stats.bands) == len(redrafted.same)
    assert sum(b.accepted for b in stats.bands) == len(redrafted.same)
    assert stats.outcomes == {"accepted": len(redrafted.same)}
    # the drafts the reviews were made on (re-made with the same text) keep every review
    first = compute_stats(redrafted.store, spec=DraftFilter(settings_key=redrafted.first_key))
    assert sum(b.accepted for b in first.bands) == IMAGES


def test_exports_show_new_drafts_with_other_text_as_unreviewed(redrafted, tmp_path, monkeypatch):
    rows = redrafted.rows()
    assert {i for i, r in rows.items() if r.review_outcome is None} == redrafted.different
    assert all(rows[i].review_outcome == "accepted" for i in redrafted.same)
    assert all(rows[i].reviewer is None for i in redrafted.different)
    assert set(redrafted.rows(review=["unreviewed"])) == redrafted.different
    assert set(redrafted.rows(review=["accepted"])) == redrafted.same
    assert set(redrafted.rows(review=["reviewed"])) == redrafted.same
    assert set(redrafted.rows(settings_key=redrafted.first_key, review=["accepted"])) == set(rows)
    monkeypatch.setattr(exports, "CHUNK_SIZE", 3)  # each chunk picks its drafts' reviews alone
    assert redrafted.rows() == rows
    out = tmp_path / "unreviewed.csv"
    done = CliRunner().invoke(app, ["export", "-f", "csv", "-o", str(out), "--review",
                                    "unreviewed", "--db", redrafted.store.url])  # fmt: skip
    assert done.exit_code == 0, done.output
    frame = pd.read_csv(out, keep_default_na=False)
    assert set(frame["image_id"]) == redrafted.different and set(frame["outcome"]) == {""}


def test_calibrate_fits_on_the_reviews_that_count_for_each_draft(redrafted, monkeypatch):
    fitted = []

    def spy(x, y, **kwargs):
        fitted.append((x.tolist(), y.tolist()))
        raise LookupError("stop before storing")

    monkeypatch.setattr(calibrate_module.calibration, "fit", spy)
    with pytest.raises(LookupError):
        calibrate_module.calibrate(redrafted.store, dry_run=True)
    ((x, y),) = fitted
    rows = redrafted.rows()
    same = sorted(redrafted.same)
    assert y == [True] * len(same)
    assert x == [pytest.approx(signals(rows[i])) for i in same]


def test_training_takes_the_text_each_image_was_reviewed_with(redrafted):
    """The accepted drafts' text, kept by the reviews (draft_text), not the new drafts'."""
    data = read_reviewed(redrafted.store)
    paths = _paths(redrafted.store)
    assert not data.skipped.total
    assert {item.extra["path"]: item.captions for item in data.items} == {
        paths[i]: [" ".join(text.split())] for i, text in redrafted.first.items()
    }


def _paths(store) -> dict[int, str]:
    with store.session() as session:
        return dict(session.execute(select(Image.id, Image.path)).all())


def test_the_report_shows_new_drafts_with_other_text_as_unreviewed(redrafted, tmp_path):
    result = write_report(redrafted.store, tmp_path / "report.html", thumb_size=0, workers=0)
    pages = "".join(p.read_text(encoding="utf-8") for p in result.pages)
    outcomes = dict(re.findall(r'id="image-(\d+)".*?<span class="outcome (\w+)">', pages, re.S))
    assert {int(i) for i, o in outcomes.items() if o == "unreviewed"} == redrafted.different
    assert {int(i) for i, o in outcomes.items() if o == "accepted"} == redrafted.same


def test_the_newest_review_that_counts_wins_not_the_images_newest(redrafted):
    """A rejection of a new draft with other text says nothing of the old draft: the old one
    stays accepted, the new one is rejected, and training drops the image (its latest word)."""
    image_id = min(redrafted.different)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    with redrafted.store.write() as session:
        draft_id = session.scalar(
            select(Caption.id).where(Caption.image_id == image_id, Caption.rank == 0,
                                     Caption.settings_key == redrafted.second_key)
        )  # fmt: skip
        session.add(Review(image_id=image_id, caption_id=draft_id, outcome="rejected",
                           draft_text=redrafted.second[image_id], reviewed_at=later,
                           fingerprint="later rejection"))  # fmt: skip
    assert redrafted.rows()[image_id].review_outcome == "rejected"
    first = redrafted.rows(settings_key=redrafted.first_key)
    assert first[image_id].review_outcome == "accepted"
    accepted = redrafted.rows(settings_key=redrafted.first_key, review=["accepted"])
    assert image_id in accepted
    rejected = redrafted.rows(review=["rejected"])
    assert set(rejected) == {image_id}
    kept = {item.extra["path"] for item in read_reviewed(redrafted.store).items}
    assert _paths(redrafted.store)[image_id] not in kept and len(kept) == IMAGES - 1
