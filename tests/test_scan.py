"""`labeler scan` through the library: odd files, incremental re-scans, duplicates, the walk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import imagefactory as make
import pytest
from sqlalchemy import select

from labeler.errors import InputError
from labeler.files.scan import scan
from labeler.store import images as image_store
from labeler.store.models import Caption, Dataset, Image, Model


def _rows(store) -> dict[str, Image]:
    with store.session() as session:
        return {row.path: row for row in session.scalars(select(Image))}


def _scan(store, *paths, **options):
    return scan(store, list(paths), workers=2, **options)


def test_every_odd_file_ends_with_a_status_and_a_reason(store, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    make.empty_file(folder)
    make.text_as_jpg(folder)
    make.truncated_jpeg(folder)
    make.bad_crc_png(folder)
    make.huge_declared_png(folder)
    make.cmyk_jpeg(folder)
    make.png16(folder)
    make.palette_png_transparent(folder)
    make.animated_gif(folder)
    make.multipage_tiff(folder)
    make.exif_rotated_jpeg(folder)
    make.one_pixel(folder)
    make.wide_strip(folder)
    make.fifo(folder)
    make.rgb_png(folder, "sub/deeper/plain.png")
    result = _scan(store, folder)
    rows = _rows(store)
    status = {path: row.status for path, row in rows.items()}
    assert status == {
        "empty.jpg": "unsupported",
        "notes.jpg": "unsupported",
        "truncated.jpg": "unreadable",
        "bad_crc.png": "unreadable",
        "bomb.png": "too_large",
        "cmyk.jpg": "ok",
        "grey16.png": "ok",
        "palette.png": "ok",
        "animated.gif": "ok",
        "pages.tif": "ok",
        "rotated.jpg": "ok",
        "one_pixel.png": "ok",
        "strip.png": "ok",
        "sub/deeper/plain.png": "ok",
    }
    assert all(rows[p].reason for p, s in status.items() if s != "ok")
    assert rows["cmyk.jpg"].mode == "CMYK"
    assert rows["animated.gif"].frames > 1 and rows["pages.tif"].frames > 1
    assert (rows["strip.png"].width, rows["strip.png"].height) == (12000, 1)
    rotated = rows["rotated.jpg"]
    assert rotated.height > rotated.width  # displayed size, after EXIF orientation
    assert result.skipped["not a regular file"] == 1  # the named pipe, never opened
    assert result.by_status["ok"] == 9 and result.files == 14


def test_file_names_that_are_not_utf8_survive_and_can_be_found(store, tmp_path):
    (tmp_path / "names").mkdir()
    raw = make.non_utf8_name(tmp_path / "names")
    _scan(store, tmp_path / "names")
    with store.session() as session:
        dataset = image_store.find_dataset(session, "names")
        found = image_store.find_image(session, dataset.id, os.fsdecode(os.path.basename(raw)))
        assert found is not None and bytes(found.path_raw) == os.path.basename(raw)
        assert found.status == "ok" and "\\xe9" in found.path


def test_a_rescan_reads_only_what_changed(store, tmp_path):
    folder = tmp_path / "photos"
    paths = make.write_many(folder, 6, size=(16, 16), fmt="PNG")
    first = _scan(store, folder)
    assert (first.new, first.changed, first.unchanged) == (6, 0, 0)
    again = _scan(store, folder)
    assert (again.new, again.changed, again.unchanged, again.missing) == (0, 0, 6, 0)
    make.plain_image(folder, paths[0].name, size=(16, 16), fmt="PNG")
    stamp = time.time() + 5
    os.utime(paths[0], (stamp, stamp))
    paths[1].unlink()
    third = _scan(store, folder)
    assert (third.new, third.changed, third.unchanged, third.missing) == (0, 1, 4, 1)
    rows = _rows(store)
    assert len(rows) == 6  # the vanished file is kept, marked missing
    assert rows[paths[1].name].status == "missing" and rows[paths[1].name].content_hash
    assert third.by_status == {"ok": 5, "missing": 1}


def test_a_changed_file_marks_its_drafts_stale(store, tmp_path):
    folder = tmp_path / "photos"
    path = make.rgb_png(folder, "a.png")
    _scan(store, folder)
    with store.write() as session:
        image = session.scalar(select(Image))
        model = Model(content_hash="0" * 64, name="m", family="show-tell")
        session.add(model)
        session.flush()
        session.add(
            Caption(
                image_id=image.id, model_id=model.id, settings_key="k", rank=0, text="red",
                log_likelihood=-1.0, num_tokens=2, confidence=0.6, score=-1.0,
                token_logprobs=[-0.5, -0.5], finished=True, repeated_ngram=False,
                has_unknown=False,
            )
        )  # fmt: skip
    make.plain_image(folder, "a.png", color=make.BLUE)
    os.utime(path, (time.time() + 5, time.time() + 5))
    result = _scan(store, folder)
    assert result.stale_drafts == 1
    with store.session() as session:
        assert session.scalar(select(Caption.stale)) is True


def test_a_file_that_comes_back_is_no_longer_missing(store, tmp_path):
    folder = tmp_path / "photos"
    path = make.rgb_png(folder, "a.png")
    data = path.read_bytes()
    _scan(store, folder)
    path.unlink()
    assert _scan(store, folder).missing == 1
    path.write_bytes(data)
    result = _scan(store, folder)
    assert result.by_status == {"ok": 1} and _rows(store)["a.png"].status == "ok"


def test_identical_content_under_two_paths_is_recognised(store, tmp_path):
    folder = tmp_path / "photos"
    a = make.rgb_png(folder, "a.png")
    (folder / "copy").mkdir()
    (folder / "copy" / "a.png").write_bytes(a.read_bytes())
    make.plain_image(folder, "b.png", color=make.BLUE)
    result = _scan(store, folder)
    assert result.duplicates == 1
    assert result.duplicate_examples == [["a.png", "copy/a.png"]]
    rows = _rows(store)
    assert rows["a.png"].content_hash == rows["copy/a.png"].content_hash


def test_include_exclude_and_hidden(store, tmp_path):
    folder = tmp_path / "photos"
    make.rgb_png(folder, "keep.png")
    make.rgb_jpeg(folder, "other.jpg")
    make.rgb_png(folder, "thumbs/small.png")
    make.rgb_png(folder, ".cache/x.png")
    make.rgb_png(folder, ".hidden.png")
    result = _scan(store, folder, include=["*.png"], exclude=["thumbs"])
    assert set(_rows(store)) == {"keep.png"}
    assert result.skipped == {"hidden": 2, "excluded": 1, "not included": 1}
    _scan(store, folder, hidden=True)
    assert ".cache/x.png" in _rows(store) and ".hidden.png" in _rows(store)


def test_symbolic_links_are_followed_only_when_asked_and_never_in_a_loop(store, tmp_path):
    folder = tmp_path / "photos"
    make.rgb_png(folder, "real/a.png")
    make.symlink_loop(folder / "real")
    (folder / "alias").symlink_to(folder / "real", target_is_directory=True)
    (folder / "dangling.png").symlink_to(folder / "nowhere.png")
    result = _scan(store, folder)
    assert set(_rows(store)) == {"real/a.png"}
    assert result.skipped["symbolic link"] == 3
    result = _scan(store, folder, follow_symlinks=True)
    rows = _rows(store)
    assert "real/a.png" in rows and rows["dangling.png"].status == "unreadable"
    assert result.skipped["folder already visited (link loop)"] >= 1
    assert not any("again/again" in path for path in rows)


def test_scanning_a_subfolder_marks_missing_only_below_it(store, tmp_path):
    folder = tmp_path / "photos"
    make.rgb_png(folder, "2023/a.png")
    gone = make.rgb_png(folder, "2024/b.png")
    _scan(store, folder, dataset="photos")
    gone.unlink()
    (tmp_path / "photos" / "2023" / "a.png").unlink()
    result = _scan(store, folder / "2024", dataset="photos")
    rows = _rows(store)
    assert result.missing == 1 and rows["2024/b.png"].status == "missing"
    assert rows["2023/a.png"].status == "ok"  # not walked, so not judged


def test_a_path_outside_the_dataset_root_is_refused(store, tmp_path):
    make.rgb_png(tmp_path / "one", "a.png")
    make.rgb_png(tmp_path / "two", "b.png")
    _scan(store, tmp_path / "one", dataset="photos")
    with pytest.raises(InputError, match="outside dataset 'photos'"):
        _scan(store, tmp_path / "two", dataset="photos")


def test_a_path_that_does_not_exist_changes_nothing(store, tmp_path):
    make.rgb_png(tmp_path / "one", "a.png")
    with pytest.raises(InputError, match="no such file or folder"):
        _scan(store, tmp_path / "one", tmp_path / "absent")
    with store.session() as session:
        assert session.scalars(select(Dataset)).all() == []


def test_the_max_pixels_limit_is_configurable(store, tmp_path):
    make.plain_image(tmp_path / "p", "big.png", size=(200, 100))
    _scan(store, tmp_path / "p", max_pixels=10_000)
    assert _rows(store)["big.png"].status == "too_large"
    _scan(store, tmp_path / "p", max_pixels=1_000_000)
    assert _rows(store)["big.png"].status == "ok"


def test_a_file_the_scanner_may_not_read_is_unreadable():
    """As root every file is readable, so the scan runs in a child that dropped to nobody, in a
    folder outside pytest's private temporary tree."""
    import shutil
    import tempfile

    from labeler.store import open_store

    shared = Path(tempfile.mkdtemp(prefix="labeler-perm-"))
    try:
        shared.chmod(0o777)
        folder = shared / "photos"
        make.rgb_png(folder, "locked.png").chmod(0)
        make.rgb_png(folder, "open.png").chmod(0o644)
        folder.chmod(0o755)
        db = shared / "store.db"
        status = _scan_as_nobody(db, folder)
        assert status == 0, "the unprivileged scan failed"
        rows = _rows(open_store(db))
    finally:
        shutil.rmtree(shared)
    locked = rows["locked.png"]
    assert (locked.status, locked.reason) == ("unreadable", "permission denied")
    assert rows["open.png"].status == "ok"


def _scan_as_nobody(db, folder) -> int:
    from labeler.store import open_store

    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            scan(open_store(db), [folder], workers=0)
            code = 0
        except BaseException as exc:  # tell the parent why
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]
