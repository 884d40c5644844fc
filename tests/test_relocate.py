"""`labeler datasets move`: a dataset copied or moved elsewhere keeps its ids, drafts and reviews,
mismatches are reported and left to the next scan, and every refusal changes nothing."""

from __future__ import annotations

import json
import os
import shutil

import imagefactory as make
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from labeler.cli import app
from labeler.errors import InputError
from labeler.files import relocate
from labeler.files.relocate import move_dataset
from labeler.files.scan import scan
from labeler.store import open_store
from labeler.store.models import Caption, CaptionRun, Dataset, Image, Model, Review

runner = CliRunner()
NAMES = ("a.bmp", "b.bmp", "sub/c.bmp")  # BMP: another colour is other bytes of the same size


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _photos(folder):
    for name, color in zip(NAMES, (make.RED, make.BLUE, make.WHITE), strict=True):
        make.plain_image(folder, name, size=(8, 6), color=color)
    return folder


def _copy(source, dest):
    """As `cp -r` copies: same bytes, new modification times."""
    shutil.copytree(source, dest, copy_function=shutil.copyfile)
    return dest


def _draft_and_review(store, path: str) -> tuple[int, int]:
    """A draft of the image at `path` from a completed caption run, and a review of it."""
    with store.write() as session:
        image = session.scalar(select(Image).where(Image.path == path))
        model = Model(content_hash="0" * 64, name="tiny", family="show-tell")
        session.add(model)
        session.flush()
        session.add(
            CaptionRun(model_id=model.id, settings_key="k", settings={}, status="completed")
        )
        draft = Caption(
            image_id=image.id, model_id=model.id, settings_key="k", rank=0, text="a red square",
            log_likelihood=-1.0, num_tokens=4, confidence=0.78, score=-1.0,
            token_logprobs=[-0.25] * 4, finished=True, repeated_ngram=False, has_unknown=False,
        )  # fmt: skip
        session.add(draft)
        session.flush()
        review = Review(
            image_id=image.id, caption_id=draft.id, text="a red box", outcome="edited",
            draft_text=draft.text, fingerprint="f" * 64,
        )  # fmt: skip
        session.add(review)
        session.flush()
        return draft.id, review.id


def _state(store) -> dict:
    """Everything a move must keep or change: the root, each image row, drafts and reviews."""
    with store.session() as session:
        return {
            "roots": session.execute(select(Dataset.name, Dataset.root, Dataset.root_raw)).all(),
            "images": session.execute(
                select(Image.id, Image.path, Image.status, Image.mtime_ns).order_by(Image.id)
            ).all(),
            "drafts": session.execute(select(Caption.id, Caption.image_id, Caption.stale)).all(),
            "reviews": session.execute(select(Review.id, Review.image_id)).all(),
        }


def _root(store, name: str = "photos") -> bytes:
    with store.session() as session:
        return bytes(session.scalar(select(Dataset.root_raw).where(Dataset.name == name)))


def test_a_moved_copy_keeps_ids_drafts_and_reviews_and_a_rescan_finds_nothing_changed(
    store, tmp_path, monkeypatch
):
    monkeypatch.setattr(relocate, "POOL_FROM", 1)  # hash in the worker pool, as big datasets do
    old = _photos(tmp_path / "old" / "photos")
    scan(store, [old], workers=0)
    draft_id, review_id = _draft_and_review(store, "a.bmp")
    before = _state(store)
    new = _copy(old, tmp_path / "elsewhere" / "photos")
    shutil.rmtree(old)
    with pytest.raises(InputError, match="labeler datasets move photos"):
        scan(store, [new], dataset="photos", workers=0)  # today's error, now with the way out
    result = move_dataset(store, "photos", new, workers=2)
    assert (result.moved, result.checked, result.matched) == (True, 3, 3)
    assert (result.changed, result.missing, result.unreadable, result.examples) == (0, 0, 0, {})
    assert result.new_root == str(new) and result.old_root == str(old)
    after = _state(store)
    assert after["roots"] == [("photos", str(new), os.fsencode(new))]
    assert [row[:3] for row in after["images"]] == [row[:3] for row in before["images"]]
    assert after["drafts"] == before["drafts"] == [(draft_id, before["images"][0][0], False)]
    assert after["reviews"] == before["reviews"] and after["reviews"][0][0] == review_id
    again = scan(store, [new], dataset="photos", workers=0)
    assert (again.new, again.changed, again.missing, again.stale_drafts) == (0, 0, 0, 0)
    assert again.unchanged == 3
    assert _state(store)["images"] == after["images"]  # recorded times were the new files'


def test_a_changed_a_deleted_and_an_unreadable_file_are_reported_and_left_to_the_scan(
    store, tmp_path
):
    old = _photos(tmp_path / "old")
    make.plain_image(old, "kept.bmp", size=(8, 6))
    scan(store, [old], dataset="photos", workers=0)
    _draft_and_review(store, "a.bmp")
    new = _copy(old, tmp_path / "new")
    stored_mtime = _state(store)["images"][0][3]
    make.plain_image(new, "a.bmp", size=(8, 6), color=make.BLUE)  # same size, other content
    os.utime(new / "a.bmp", ns=(stored_mtime, stored_mtime))  # even the time the store has
    (new / "b.bmp").unlink()
    (new / "sub" / "c.bmp").unlink()
    (new / "sub" / "c.bmp").mkdir()
    result = move_dataset(store, "photos", new, workers=0)
    assert result.moved and (result.matched, result.changed, result.missing) == (1, 1, 1)
    assert result.unreadable == 1
    assert result.examples == {
        "changed": [("a.bmp", "same size, different content")],
        "missing": [("b.bmp", "no such file")],
        "unreadable": [("sub/c.bmp", "not a regular file")],
    }
    statuses = [row[2] for row in _state(store)["images"]]
    assert statuses == ["ok"] * 4  # rows left as they were, for the scan to judge
    rescan = scan(store, [new], dataset="photos", workers=0)
    assert (rescan.changed, rescan.missing, rescan.stale_drafts) == (1, 2, 1)
    assert {row[1]: row[2] for row in _state(store)["images"]} == {
        "a.bmp": "ok", "b.bmp": "missing", "kept.bmp": "ok", "sub/c.bmp": "missing",
    }  # fmt: skip


def test_a_dry_run_reports_and_changes_nothing(store, tmp_path):
    old = _photos(tmp_path / "old")
    scan(store, [old], dataset="photos", workers=0)
    new = _copy(old, tmp_path / "new")
    (new / "b.bmp").unlink()
    before = _state(store)
    result = move_dataset(store, "photos", new, dry_run=True, workers=0)
    assert not result.moved and (result.matched, result.missing) == (2, 1)
    assert _state(store) == before


def test_images_without_stored_content_are_not_checked(store, tmp_path):
    old = _photos(tmp_path / "old")
    scan(store, [old], dataset="photos", workers=0)
    (old / "b.bmp").unlink()
    scan(store, [old], dataset="photos", workers=0)  # b.bmp is now missing
    result = move_dataset(store, "photos", _copy(old, tmp_path / "new"), workers=0)
    assert (result.checked, result.matched, result.unchecked) == (2, 2, 1)


def test_a_root_whose_name_is_not_utf8_is_kept_as_bytes(store, tmp_path):
    old = _photos(tmp_path / "old")
    scan(store, [old], dataset="photos", workers=0)
    new = tmp_path / os.fsdecode(b"caf\xe9")
    _copy(old, new)
    result = move_dataset(store, "photos", new, workers=0)
    assert result.matched == 3 and result.new_root.endswith("caf\\xe9")
    assert _root(store) == os.fsencode(new)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown dataset", "no dataset named nope; see `labeler datasets`"),
        ("no such folder", "{tmp}/absent: no such folder"),
        ("a file", "{tmp}/new/a.bmp: not a folder"),
        ("another dataset's root", "{tmp}/other is already the root of dataset 'other'"),
        ("its own root", "{tmp}/old is already the root of dataset 'photos'"),
        ("wrong folder", "none of the 3 images of 'photos' is in {tmp}/other with the same"),
    ],
)
def test_each_refusal_changes_nothing(store, tmp_path, case, message):
    old = _photos(tmp_path / "old")
    scan(store, [old], dataset="photos", workers=0)
    other = make.rgb_png(tmp_path / "other", "x.png").parent
    scan(store, [other], workers=0)
    new = _copy(old, tmp_path / "new")
    name, target = {
        "unknown dataset": ("nope", new),
        "no such folder": ("photos", tmp_path / "absent"),
        "a file": ("photos", new / "a.bmp"),
        "another dataset's root": ("photos", other),
        "its own root": ("photos", old),
        "wrong folder": ("photos", other),
    }[case]
    if case == "wrong folder":
        with store.write() as session:  # `other` free to move to, and still holding no match
            session.execute(Dataset.__table__.delete().where(Dataset.name == "other"))
    before = _state(store)
    with pytest.raises(InputError) as raised:
        move_dataset(store, name, target, workers=0)
    assert str(raised.value).startswith(message.format(tmp=tmp_path))
    assert _state(store) == before


def test_force_moves_even_when_nothing_matches(store, tmp_path):
    old = _photos(tmp_path / "old")
    scan(store, [old], dataset="photos", workers=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = move_dataset(store, "photos", empty, force=True, workers=0)
    assert result.moved and (result.matched, result.missing) == (0, 3)
    assert _root(store) == os.fsencode(empty)


# The command line ------------------------------------------------------------------------------


def test_the_command_moves_and_label_studio_exports_from_the_new_root(store_url, tmp_path):
    store = open_store(store_url)
    old = _photos(tmp_path / "old" / "photos")
    scan(store, [old], workers=0)
    _draft_and_review(store, "a.bmp")
    new = _copy(old, tmp_path / "served" / "photos")
    export = ["export", "-f", "label-studio", "-o", tmp_path / "tasks.json", "--force"]
    export += ["--document-root", tmp_path / "served", "--db", store_url]
    refused = invoke(*export)
    assert refused.exit_code == 1 and "not under the document root" in refused.stderr
    moved = invoke("datasets", "move", "photos", new, "--json", "--db", store_url)
    assert moved.exit_code == 0, moved.output
    report = json.loads(moved.stdout)
    assert report["moved"] and (report["matched"], report["changed"], report["missing"]) == (
        3,
        0,
        0,
    )
    assert report["new_root"] == str(new) and report["elapsed_s"] >= 0
    exported = invoke(*export)
    assert exported.exit_code == 0, exported.output
    (task,) = json.loads((tmp_path / "tasks.json").read_text())
    assert task["data"]["image"] == "/data/local-files/?d=photos/a.bmp"
    rescan = invoke("scan", new, "--dataset", "photos", "--json", "--db", store_url)
    assert rescan.exit_code == 0, rescan.output
    assert json.loads(rescan.stdout)["unchanged"] == 3
    store.dispose()


def test_the_command_reports_mismatches_and_a_dry_run_as_text(store_url, tmp_path):
    store = open_store(store_url)
    old = _photos(tmp_path / "old")
    scan(store, [old], dataset="photos", workers=0)
    new = _copy(old, tmp_path / "new")
    (new / "b.bmp").unlink()
    before = _state(store)
    done = invoke("datasets", "move", "photos", new, "--dry-run", "--db", store_url)
    assert done.exit_code == 0, done.output
    assert "2 matched, 0 changed, 1 missing" in done.stdout
    assert "missing, e.g. b.bmp (no such file)" in done.stdout
    assert "Dry run, nothing changed" in done.stdout
    assert _state(store) == before
    store.dispose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "new"], "Error: no dataset named nope; see `labeler datasets`"),
        (["photos", "absent"], "Error: {tmp}/absent: no such folder"),
        (["photos", "old"], "Error: {tmp}/old is already the root of dataset 'photos'"),
        (["photos", "empty"], "Error: none of the 3 images of 'photos' is in {tmp}/empty with "
         "the same content; is it the right folder? (--force moves anyway)"),
    ],
)  # fmt: skip
def test_a_refused_move_is_a_one_line_error_and_changes_nothing(store_url, tmp_path, args, message):
    store = open_store(store_url)
    scan(store, [_photos(tmp_path / "old")], dataset="photos", workers=0)
    _copy(tmp_path / "old", tmp_path / "new")
    (tmp_path / "empty").mkdir()
    before = _state(store)
    name, folder = args
    result = invoke("datasets", "move", name, tmp_path / folder, "--db", store_url)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [message.format(tmp=tmp_path)]
    assert _state(store) == before
    store.dispose()


def test_datasets_without_a_subcommand_still_lists(store_url, tmp_path):
    store = open_store(store_url)
    scan(store, [_photos(tmp_path / "photos")], workers=0)
    store.dispose()
    listed = invoke("datasets", "--json", "--db", store_url)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [{"name": "photos", "images": 3, "ok": 3}]
    table = invoke("datasets", "--db", store_url)
    assert table.exit_code == 0 and "photos" in table.stdout and "missing" in table.stdout
    assert "move" in invoke("datasets", "--help").stdout
