"""The review loop on a real store: export, review with pandas, import, stats, supersession."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import imagefactory as make
import pandas as pd
import psutil
import pytest
from captionkit import tiny_checkpoint
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from labeler.calibration import auroc
from labeler.caption.job import caption_images
from labeler.cli import app
from labeler.errors import FormatError, InputError, LabelerError, StoreError
from labeler.files.scan import scan
from labeler.formats import tabular
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.review import readahead
from labeler.review.export import export_drafts
from labeler.review.importer import import_reviews
from labeler.review.stats import SCORES, compute_stats, threshold_for, word_edit_distance
from labeler.store import drafts as exports
from labeler.store.drafts import DraftFilter, iter_drafts
from labeler.store.models import Caption, CaptionRun, Dataset, Image, Model, Review

ImageRow, CaptionRow = Image.__table__, Caption.__table__

IMAGES = 8


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    return ShowTellCaptioner.from_checkpoint(path, device="cpu")


@pytest.fixture
def drafted(store, tmp_path, captioner):
    make.write_many(tmp_path / "photos", IMAGES, size=(48, 40))
    scan(store, [tmp_path / "photos"], workers=1)
    settings = DecodeSettings(beam_size=3, max_len=8, n_best=3)
    caption_images(store, captioner, settings=settings, workers=0, procs=0, batch_size=4)
    return store


def _rows(store, **filters):
    with store.session() as session:
        return list(iter_drafts(session, DraftFilter(**filters), n_best=3))


def test_csv_export_is_worst_first_with_empty_review_columns(drafted, tmp_path):
    result = export_drafts(drafted, "csv", tmp_path / "drafts.csv", n_best=2)
    frame = pd.read_csv(tmp_path / "drafts.csv", keep_default_na=False)
    assert result.count == IMAGES == len(frame)
    assert list(frame["confidence"]) == sorted(frame["confidence"])
    assert set(frame["reviewed_caption"]) == {""} and set(frame["outcome"]) == {""}
    assert frame["alt1_caption"].str.len().min() > 0
    with pytest.raises(InputError, match="exists"):
        export_drafts(drafted, "csv", tmp_path / "drafts.csv")


def test_filters_narrow_the_export(drafted):
    everything = _rows(drafted)
    confidences = sorted(r.confidence for r in everything)
    middle = confidences[IMAGES // 2]
    assert all(r.confidence >= middle for r in _rows(drafted, min_confidence=middle))
    assert len(_rows(drafted, max_confidence=middle)) == IMAGES // 2 + 1
    assert [r.path for r in _rows(drafted, path_glob="img_00000?.jpg")] != []
    assert {r.path for r in _rows(drafted, path_glob="*3.jpg")} == {"img_000003.jpg"}
    assert len(_rows(drafted, limit=3)) == 3
    flagged = _rows(drafted, flagged=True)
    assert all(r.flagged for r in flagged)
    assert len(flagged) + len(_rows(drafted, flagged=False)) == IMAGES
    assert all(len(r.alternatives) == 2 for r in everything)
    with pytest.raises(InputError, match="no dataset named nowhere"):
        _rows(drafted, datasets=["nowhere"])


def _review_file(drafted, tmp_path, name="reviewed.csv"):
    export_drafts(drafted, "csv", tmp_path / name, force=True)
    frame = pd.read_csv(tmp_path / name, keep_default_na=False)
    frame.loc[0, "reviewed_caption"] = "a completely different caption"  # edited
    frame.loc[1, "reviewed_caption"] = frame.loc[1, "draft_caption"]  # accepted by copying
    frame.loc[2, "outcome"] = "accepted"
    frame.loc[3, "outcome"] = "rejected"
    frame.to_csv(tmp_path / name, index=False)
    return frame


def test_a_spreadsheet_round_trip_imports_each_outcome_once(drafted, tmp_path):
    frame = _review_file(drafted, tmp_path)
    first = import_reviews(drafted, tmp_path / "reviewed.csv", reviewer="ana")
    assert (first.records, first.added, first.already) == (4, 4, 0)
    assert first.by_outcome == {"edited": 1, "accepted": 2, "rejected": 1}
    again = import_reviews(drafted, tmp_path / "reviewed.csv")
    assert (again.added, again.already) == (0, 4)
    rows = {r.image_id: r for r in _rows(drafted, review=["reviewed"])}
    edited = rows[int(frame.loc[0, "image_id"])]
    assert edited.review_outcome == "edited"
    assert edited.review_text == "a completely different caption" and edited.reviewer == "ana"
    accepted = rows[int(frame.loc[2, "image_id"])]
    assert accepted.review_text == accepted.text
    assert len(_rows(drafted, review=["unreviewed"])) == IMAGES - 4
    assert len(_rows(drafted, review=["accepted", "rejected"])) == 3


def test_a_newer_review_supersedes_an_older_one(drafted, tmp_path):
    frame = _review_file(drafted, tmp_path)
    import_reviews(drafted, tmp_path / "reviewed.csv")
    image_id = int(frame.loc[3, "image_id"])
    later = frame.iloc[[3]].copy()
    later.loc[later.index[0], "outcome"] = "accepted"
    later.to_json(tmp_path / "later.jsonl", orient="records", lines=True)
    assert import_reviews(drafted, tmp_path / "later.jsonl").added == 1
    (row,) = [r for r in _rows(drafted) if r.image_id == image_id]
    assert row.review_outcome == "accepted"


def test_chunk_boundaries_change_nothing(drafted, tmp_path, monkeypatch):
    """Drafts are read a chunk at a time, each chunk's reviews and alternatives with one query:
    chunks of 3 rows (the last one short) write the bytes that one chunk writes."""
    _review_file(drafted, tmp_path)
    import_reviews(drafted, tmp_path / "reviewed.csv", reviewer="ana")
    for fmt in ("csv", "jsonl", "json"):
        export_drafts(drafted, fmt, tmp_path / f"whole.{fmt}", n_best=3)
    whole = _rows(drafted)
    monkeypatch.setattr(exports, "CHUNK_SIZE", 3)
    for fmt in ("csv", "jsonl", "json"):
        export_drafts(drafted, fmt, tmp_path / f"chunked.{fmt}", n_best=3)
        assert (tmp_path / f"chunked.{fmt}").read_bytes() == (
            tmp_path / f"whole.{fmt}"
        ).read_bytes()
    assert _rows(drafted) == whole
    with drafted.session() as session:
        assert [len(c) for c in iter_drafts(session, DraftFilter()).chunks()] == [3, 3, 2]
    assert sum(r.review_outcome is not None for r in whole) == 4
    assert all(len(r.alternatives) == 2 for r in whole)


def _unknown_image(frame, row: int) -> None:
    """The row names an image the store lacks, by id, path and content hash alike (an id alone
    that does not fit is matched by path: tests/test_import_matching.py)."""
    for column, value in (("image_id", 999), ("path", "gone.jpg"), ("content_hash", "0" * 64)):
        frame[column] = frame[column].where(frame.index != row, value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: _unknown_image(f, 2),
         "reviewed.csv line 4: no image with id 999 in the store; no image at path 'gone.jpg'"),
        (lambda f: f.__setitem__("outcome", f["outcome"].where(f.index != 1, "maybe")),
         "reviewed.csv line 3: unknown outcome 'maybe'"),
    ],
)  # fmt: skip
def test_a_bad_import_changes_nothing_and_names_the_line(drafted, tmp_path, change, message):
    frame = _review_file(drafted, tmp_path)
    change(frame)
    frame.to_csv(tmp_path / "reviewed.csv", index=False)
    with pytest.raises(FormatError, match=message):
        import_reviews(drafted, tmp_path / "reviewed.csv")
    with drafted.session() as session:
        assert session.scalar(select(func.count()).select_from(Review)) == 0


def test_paths_match_and_paths_outside_the_dataset_are_refused(drafted, tmp_path):
    good = tmp_path / "by_path.jsonl"
    good.write_text(json.dumps({"path": "img_000001.jpg", "outcome": "rejected"}) + "\n")
    assert import_reviews(drafted, good).added == 1
    bad = tmp_path / "escape.jsonl"
    bad.write_text(json.dumps({"path": "../photos/img_000001.jpg", "outcome": "rejected"}) + "\n")
    with pytest.raises(FormatError, match="escape.jsonl line 1: .*leaves the dataset"):
        import_reviews(drafted, bad)
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"path": "/etc/passwd", "outcome": "rejected"}) + "\n")
    with pytest.raises(FormatError, match="outside every dataset"):
        import_reviews(drafted, outside)


def test_label_studio_annotations_come_back(drafted, tmp_path):
    export_drafts(drafted, "label-studio", tmp_path / "tasks.json", url_prefix="http://files")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    tasks[0]["annotations"] = [{
        "id": 1, "completed_by": 3, "was_cancelled": False, "updated_at": "2026-11-20T10:00:00Z",
        "result": [{"from_name": "caption", "to_name": "image", "type": "textarea",
                    "value": {"text": ["a reviewer wrote this"]}}],
    }]  # fmt: skip
    tasks[1]["annotations"] = [{"id": 2, "was_cancelled": True, "result": []}]
    (tmp_path / "ls-export.json").write_text(json.dumps(tasks))
    result = import_reviews(drafted, tmp_path / "ls-export.json")
    assert result.by_outcome == {"edited": 1, "skipped": 1}


def test_stats_calibrate_confidence_against_reviews(drafted, tmp_path):
    before = compute_stats(drafted)
    assert before.drafts == IMAGES and sum(before.histogram) == IMAGES
    assert before.auroc is None and not any(b.reviewed for b in before.bands)
    rows = sorted(_rows(drafted), key=lambda r: r.confidence)
    lines = [json.dumps({"image_id": r.image_id,
                         "outcome": "accepted" if i >= IMAGES // 2 else "rejected"})
             for i, r in enumerate(rows)]  # fmt: skip
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    import_reviews(drafted, tmp_path / "r.jsonl")
    stats = compute_stats(drafted, target=1.0)
    assert stats.auroc == pytest.approx(1.0)  # the confident half was the accepted half
    assert stats.threshold == pytest.approx(rows[IMAGES // 2].confidence)
    assert stats.passed == IMAGES // 2
    assert sum(b.reviewed for b in stats.bands) == IMAGES


def _rank_against_confidence(store) -> list:
    """Give the best drafts a p_accept that ranks them the other way round from confidence,
    as a calibrator might; returns the rows, in the new order (worst p_accept first)."""
    rows = sorted(_rows(store), key=lambda r: r.confidence)
    with store.write() as session:
        for i, row in enumerate(rows):
            session.execute(
                update(Caption).where(Caption.id == row.caption_id)
                .values(p_accept=0.95 - 0.1 * i)  # mid-band
            )  # fmt: skip
    return _rows(store)


def test_exports_rank_by_p_accept_and_filter_on_it(drafted, tmp_path):
    rows = _rank_against_confidence(drafted)
    assert [r.p_accept for r in rows] == sorted(r.p_accept for r in rows)
    assert [r.confidence for r in rows] == sorted((r.confidence for r in rows), reverse=True)
    export_drafts(drafted, "csv", tmp_path / "d.csv")
    frame = pd.read_csv(tmp_path / "d.csv", keep_default_na=False)
    assert list(frame["image_id"]) == [r.image_id for r in rows]  # worst p_accept first
    assert list(frame.columns).index("p_accept") + 1 == list(frame.columns).index("confidence")
    assert list(frame["p_accept"]) == [r.p_accept for r in rows]
    with drafted.session() as session:
        descending = list(iter_drafts(session, DraftFilter(), sort="-p_accept"))
        by_confidence = list(iter_drafts(session, DraftFilter(), sort="confidence"))
    assert [r.image_id for r in descending] == [r.image_id for r in reversed(rows)]
    assert [r.image_id for r in by_confidence] == [r.image_id for r in reversed(rows)]
    middle = rows[IMAGES // 2].p_accept
    assert {r.image_id for r in _rows(drafted, min_p_accept=middle)} == {
        r.image_id for r in rows[IMAGES // 2 :]
    }
    between = _rows(drafted, max_p_accept=middle, min_p_accept=0.35)
    assert [r.image_id for r in between] == [r.image_id for r in rows[2 : IMAGES // 2 + 1]]
    with pytest.raises(InputError, match="--max-p-accept must be between 0 and 1"):
        DraftFilter(max_p_accept=1.5)


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan"])
def test_a_p_accept_bound_outside_0_1_is_a_one_line_error(drafted, tmp_path, bad):
    runner = CliRunner()
    for command in (["export", "-f", "csv", "-o", str(tmp_path / "x.csv")],
                    ["report", "-o", str(tmp_path / "r.html")]):  # fmt: skip
        done = runner.invoke(app, [*command, "--min-p-accept", bad, "--db", drafted.url])
        assert done.exit_code == 1, done.output
        assert done.stderr.strip().splitlines() == [
            f"Error: --min-p-accept must be between 0 and 1, got {float(bad)}"
        ]
    assert not list(tmp_path.glob("x.csv*")) and not (tmp_path / "r.html").exists()


def test_stats_measure_p_accept_and_every_signal_against_reviews(drafted, tmp_path):
    rows = _rank_against_confidence(drafted)
    lines = [json.dumps({"image_id": r.image_id,
                         "outcome": "accepted" if i >= IMAGES // 2 else "rejected"})
             for i, r in enumerate(rows)]  # fmt: skip
    lines.append(json.dumps({"image_id": rows[0].image_id, "outcome": "skipped"}))
    (tmp_path / "r.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    import_reviews(drafted, tmp_path / "r.jsonl")
    stats = compute_stats(drafted, target=1.0)
    assert set(stats.signal_auroc) == set(SCORES)
    assert stats.auroc == stats.signal_auroc["p_accept"] == pytest.approx(1.0)
    assert stats.signal_auroc["confidence"] == pytest.approx(0.0)  # ranked backwards
    assert stats.threshold == pytest.approx(rows[IMAGES // 2].p_accept)  # a p_accept now
    assert stats.passed == IMAGES // 2
    assert sum(stats.histogram) == IMAGES
    assert [b.drafts for b in stats.bands] == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    reviewed = [b for b in stats.bands if b.reviewed]
    assert all(b.predicted == pytest.approx(rows[i].p_accept) for i, b in enumerate(reviewed))
    assert [b.acceptance for b in reviewed] == [0.0] * (IMAGES // 2) + [1.0] * (IMAGES // 2)
    expected_ece = sum(abs(r.p_accept - (i >= IMAGES // 2)) for i, r in enumerate(rows)) / IMAGES
    assert stats.ece == pytest.approx(expected_ece)
    assert stats.mean_p_accept == pytest.approx(sum(r.p_accept for r in rows) / IMAGES)
    assert [(u.version, u.drafts) for u in stats.scored_by] == [(None, IMAGES)]
    # a newer review that skips the draft leaves it out: a skip is no judgement
    (tmp_path / "s.jsonl").write_text(lines[-1] + "\n")
    import_reviews(drafted, tmp_path / "s.jsonl")
    after = compute_stats(drafted, target=1.0)
    assert sum(b.reviewed for b in after.bands) == IMAGES - 1 and after.outcomes["skipped"] == 1
    assert after.bands[2].reviewed == 0 and after.auroc == pytest.approx(1.0)
    text = CliRunner().invoke(app, ["stats", "--target", "1", "--db", drafted.url]).stdout
    assert "Expected calibration error of p_accept" in text and "log_likelihood" in text
    assert f"p_accept at or above {after.threshold:.3f}" in text
    assert "confidence (no calibrator)" in text
    data = json.loads(CliRunner().invoke(app, ["stats", "--json", "--db", drafted.url]).stdout)
    assert data["ece"] == pytest.approx(after.ece) and set(data["signal_auroc"]) == set(SCORES)
    assert data["bands"][9]["predicted"] == pytest.approx(rows[-1].p_accept)


def test_score_helpers_on_known_answers():
    assert auroc([0.9, 0.8, 0.2], [True, True, False]) == 1.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.3], [True]) is None
    assert threshold_for([(0.9, True), (0.8, True), (0.7, False), (0.6, True)], 1.0) == 0.8
    assert threshold_for([(0.9, True), (0.8, True), (0.7, False), (0.6, True)], 0.75) == 0.6
    assert threshold_for([(0.9, False)], 0.5) is None
    assert word_edit_distance("a red square", "a Red  square") == 0
    assert word_edit_distance("a red square", "a blue square on grass") == 3


def test_the_cli_exports_imports_and_reports(drafted, tmp_path):
    runner = CliRunner()
    db = ["--db", drafted.url]
    out = runner.invoke(
        app, ["export", "-f", "jsonl", "-o", str(tmp_path / "d.jsonl"), "--json", *db]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["count"] == IMAGES
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"image_id,reviewed_caption\n1,caf\xe9\n")
    failed = runner.invoke(app, ["import", str(bad), *db])
    assert failed.exit_code == 1 and "bad.csv line 2" in failed.stderr
    stats = runner.invoke(app, ["stats", "--json", *db])
    assert json.loads(stats.stdout)["drafts"] == IMAGES
    assert runner.invoke(app, ["stats", *db]).exit_code == 0


def test_a_record_with_only_a_content_hash_reviews_every_copy(drafted, tmp_path):
    (row, *_) = _rows(drafted)
    by_hash = tmp_path / "by_hash.jsonl"
    by_hash.write_text(json.dumps({"content_hash": row.content_hash, "outcome": "rejected"}) + "\n")
    assert import_reviews(drafted, by_hash).added == 1
    (reviewed,) = _rows(drafted, review=["rejected"])
    assert reviewed.image_id == row.image_id
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"content_hash": "0" * 64, "outcome": "rejected"}) + "\n")
    with pytest.raises(FormatError, match="unknown.jsonl line 1: no image with content hash"):
        import_reviews(drafted, unknown)


# A large export is read in a child process (labeler/review/readahead.py) --------------------------


URL = "https://data.example/"


def _undated(path) -> bytes:
    """The file without CVAT's time of writing."""
    return re.sub(rb"<dumped>[^<]*</dumped>", b"", path.read_bytes())


def _die(chunk) -> None:
    """A `prepare` for the reader process that kills it, as the OOM killer would."""
    os._exit(3)


def test_a_large_export_read_in_a_child_writes_the_same_bytes(drafted, tmp_path, monkeypatch):
    _review_file(drafted, tmp_path)
    import_reviews(drafted, tmp_path / "reviewed.csv", reviewer="ana")
    formats = {"csv": "d.csv", "jsonl": "d.jsonl", "json": "d.json", "cvat": "d.xml",
               "coco": "d.coco.json", "label-studio": "d.ls.json"}  # fmt: skip
    for fmt, name in formats.items():
        export_drafts(drafted, fmt, tmp_path / f"in-process-{name}", n_best=3, url_prefix=URL)
    with drafted.session() as session:
        assert not readahead.worthwhile(drafted, session, DraftFilter())  # 8 drafts: in process
    monkeypatch.setattr(readahead, "MIN_ROWS", 5)
    started, chunks = [], readahead.ReadAhead.chunks
    monkeypatch.setattr(
        readahead.ReadAhead, "chunks", lambda self: started.append(self) or chunks(self)
    )
    for fmt, name in formats.items():
        export_drafts(drafted, fmt, tmp_path / f"child-{name}", n_best=3, url_prefix=URL)
        child, parent = tmp_path / f"child-{name}", tmp_path / f"in-process-{name}"
        assert _undated(child) == _undated(parent), fmt
    assert [r.prepare is not None for r in started] == [True, True, True, False, False, False]
    with drafted.session() as session:
        assert not readahead.worthwhile(drafted, session, DraftFilter(limit=4))
    assert multiprocessing.active_children() == []


def test_the_reader_process_reports_its_errors_and_is_stopped(drafted, tmp_path):
    missing = "sqlite:///" + str(tmp_path / "no-such-folder" / "store.db")
    with drafted.session() as session:
        stream = iter_drafts(session, DraftFilter(), n_best=3)
        with pytest.raises(StoreError, match="cannot create the store"):
            list(readahead.ReadAhead(missing, stream).chunks())
        chunks = readahead.ReadAhead(drafted.url, stream).chunks()
        first = next(chunks)
        assert len(first) == IMAGES and all(len(a) == 2 for a in first.alternatives)
        chunks.close()  # a writer that stops early
    assert multiprocessing.active_children() == []


def _many_drafts(store, n: int) -> None:
    """`n` drafts of one model written straight into the store: several chunks' worth."""
    with store.write() as session:
        session.add(Model(id=1, content_hash="ab" * 32, name="bulk", family="show-tell"))
        session.add(Dataset(id=1, name="bulk", root="/data", root_raw=b"/data"))
        session.flush()
        session.add(CaptionRun(model_id=1, settings_key="k", settings={}, status="completed"))
        session.flush()
        conn = session.connection()
        images = [
            {"dataset_id": 1, "path": f"{i:06d}.jpg", "path_raw": f"{i:06d}.jpg".encode(),
             "size": 1, "mtime_ns": 0, "content_hash": f"{i:064x}", "status": "ok"}
            for i in range(n)
        ]  # fmt: skip
        ids = conn.execute(ImageRow.insert().returning(ImageRow.c.id), images).scalars().all()
        conn.execute(
            CaptionRow.insert(),
            [{"image_id": image_id, "model_id": 1, "settings_key": "k", "rank": 0,
              "text": "a red circle on the left " * 8, "log_likelihood": -1.0 - i / n,
              "num_tokens": 41, "confidence": 0.5, "score": -1.0,
              "token_logprobs": [-0.1] * 41, "margin": 0.1, "finished": True,
              "repeated_ngram": False, "has_unknown": False, "stale": False}
             for i, image_id in enumerate(ids)],
        )  # fmt: skip


def test_a_reader_killed_mid_export_fails_it_and_writes_nothing(store, tmp_path, monkeypatch):
    """Killed after sending its first chunk (far more than a pipe holds), then before it:
    either way the export ends with the exit code instead of waiting, and leaves no file."""
    _many_drafts(store, 5000)  # three chunks
    monkeypatch.setattr(readahead, "MIN_ROWS", 1)
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(120)  # a hang fails this test instead of stalling the whole run
    try:
        for die in (_die_at_second_chunk, _die):
            monkeypatch.setattr(tabular, "prepare", die)
            with pytest.raises(LabelerError, match=r"reader process stopped \(exit code 3\)"):
                export_drafts(store, "csv", tmp_path / "drafts.csv")
            assert list(tmp_path.glob("drafts.csv*")) == []
            assert multiprocessing.active_children() == []
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _hung(signum, frame) -> None:
    raise TimeoutError("the export waited for a reader process that had died")


_CHUNKS_SEEN = []


def _die_at_second_chunk(chunk) -> None:
    _CHUNKS_SEEN.append(len(chunk))  # in the reader process's own copy of this module
    if len(_CHUNKS_SEEN) == 2:
        os._exit(3)


def test_a_reader_whose_writer_dies_exits_too(store, tmp_path):
    """The writer killed mid-export (as by SIGKILL): the reader must not hold its read
    transaction open forever; its next write to the pipe fails and it exits."""
    _many_drafts(store, 9000)
    script = tmp_path / "writer.py"
    script.write_text(
        "import multiprocessing, os, sys\n"
        "from labeler.review import readahead\n"
        "from labeler.store import open_store\n"
        "from labeler.store.drafts import DraftFilter, iter_drafts\n"
        "if __name__ == '__main__':\n"
        f"    store = open_store({store.url!r})\n"
        "    with store.session() as session:\n"
        "        stream = iter_drafts(session, DraftFilter())\n"
        "        chunks = readahead.ReadAhead(store.url, stream).chunks()\n"
        "        next(chunks)  # and keep the generator: its end would stop the reader\n"
        "        print(multiprocessing.active_children()[0].pid, flush=True)\n"
        "        os._exit(9)\n"
    )  # fmt: skip
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    reader = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _running(reader) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(reader)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie has exited
    except psutil.NoSuchProcess:
        return False


def test_a_reader_that_cannot_start_leaves_the_reading_to_the_writer(drafted, tmp_path):
    """A script read from stdin cannot be re-imported by a new process: read in process."""
    export_drafts(drafted, "jsonl", tmp_path / "expected.jsonl", n_best=3)
    script = (
        "from pathlib import Path\n"
        "from labeler.review import readahead\n"
        "from labeler.review.export import export_drafts\n"
        "from labeler.store import open_store\n"
        "readahead.MIN_ROWS = 1\n"
        f"store = open_store({drafted.url!r})\n"
        f"export_drafts(store, 'jsonl', Path({str(tmp_path / 'out.jsonl')!r}), n_best=3)\n"
    )
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "expected.jsonl").read_bytes()


def test_the_read_ahead_counts_only_the_datasets_asked_for(store, tmp_path, monkeypatch):
    _many_drafts(store, 50)
    with store.write() as session:
        session.add(Dataset(id=2, name="empty", root="/other", root_raw=b"/other"))
    monkeypatch.setattr(readahead, "MIN_ROWS", 50)
    with store.session() as session:
        assert readahead.worthwhile(store, session, DraftFilter())
        assert readahead.worthwhile(store, session, DraftFilter(datasets=["bulk"]))
        assert not readahead.worthwhile(store, session, DraftFilter(datasets=["empty"]))
        with pytest.raises(InputError, match="no dataset named nowhere"):
            readahead.worthwhile(store, session, DraftFilter(datasets=["bulk", "nowhere"]))
    with pytest.raises(InputError, match="no dataset named nowhere"):
        export_drafts(store, "csv", tmp_path / "d.csv", spec=DraftFilter(datasets=["nowhere"]))


def test_stats_refuse_a_target_or_bins_out_of_range_in_the_library_too(drafted):
    for options, message in (({"target": 0}, "--target must be in"),
                             ({"target": 1.5}, "--target must be in"),
                             ({"target": float("nan")}, "--target must be in"),
                             ({"bins": 0}, "--bins must be at least 1")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            compute_stats(drafted, **options)
    result = CliRunner().invoke(app, ["stats", "--target", "2", "--db", drafted.url])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: --target must be in (0, 1], got 2.0"]
