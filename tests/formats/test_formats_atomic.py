"""Atomic output: no overwrite without force, and a failure midway leaves nothing behind."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import weakref
from pathlib import Path

import imagefactory as make
import pytest
from captionkit import tiny_checkpoint
from formats.test_formats_rows import make_row
from typer.testing import CliRunner

from labeler import records as rows_module
from labeler.atomic import AtomicFile, atomic_output, atomic_outputs, remove_leftovers
from labeler.caption.job import caption_images
from labeler.cli import app
from labeler.errors import InputError
from labeler.files.scan import scan
from labeler.formats import (
    write_coco,
    write_csv,
    write_cvat,
    write_hf,
    write_json,
    write_jsonl,
    write_label_studio,
    write_sidecar,
)
from labeler.formats.labelstudio import config_path
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.review.export import export_drafts


def failing_rows(root, after: int = 3):
    """Rows that end in an error, as a store whose connection drops midway would."""
    for i in range(1, after + 1):
        yield make_row(i, root=root, review_text="a red square", review_outcome="edited")
    raise RuntimeError("the store went away")


def writers(tmp_path):
    """(writer, destination, keyword options, every file it writes) for each single-dest format."""
    gt = tmp_path / "gt.json"
    tasks = tmp_path / "tasks.json"
    return [
        (write_csv, tmp_path / "a.csv", {}, [tmp_path / "a.csv"]),
        (write_jsonl, tmp_path / "a.jsonl", {}, [tmp_path / "a.jsonl"]),
        (write_json, tmp_path / "a.json", {}, [tmp_path / "a.json"]),
        (write_cvat, tmp_path / "a.xml", {}, [tmp_path / "a.xml"]),
        (write_hf, tmp_path, {}, [tmp_path / "metadata.jsonl"]),
        (write_coco, tmp_path / "res.json", {"ground_truth": gt}, [tmp_path / "res.json", gt]),
        (write_label_studio, tasks, {"url_prefix": "http://x"}, [tasks, config_path(tasks)]),
    ]


@pytest.mark.parametrize("index", range(7))
def test_failure_midway_leaves_destination_untouched_and_no_temp_file(tmp_path, index):
    writer, dest, options, files = writers(tmp_path)[index]
    for path in files:
        path.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="store went away"):
        writer(failing_rows(tmp_path), dest, force=True, **options)
    assert all(path.read_text(encoding="utf-8") == "old" for path in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)


@pytest.mark.parametrize("index", range(7))
def test_existing_file_needs_force(tmp_path, index):
    writer, dest, options, files = writers(tmp_path)[index]
    files[-1].write_text("old", encoding="utf-8")  # even the second file of a pair is guarded
    rows = [make_row(1, root=tmp_path, review_outcome="accepted")]
    with pytest.raises(InputError, match="already exists; use --force"):
        writer(iter(rows), dest, **options)
    assert files[-1].read_text(encoding="utf-8") == "old"
    assert all(not p.exists() for p in files[:-1])
    assert [p.name for p in tmp_path.iterdir()] == [files[-1].name]
    result = writer(iter(rows), dest, force=True, **options)
    assert result.paths == files and files[-1].read_text(encoding="utf-8") != "old"


def test_bad_destinations(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_csv([], tmp_path / "missing" / "a.csv")
    with pytest.raises(InputError, match="is a folder"):
        write_csv([], tmp_path)


def test_new_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_csv([], tmp_path / "a.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644


def test_destination_appearing_during_the_write_is_not_replaced(tmp_path):
    dest = tmp_path / "a.txt"
    with pytest.raises(InputError, match="already exists"), atomic_output(dest) as out:
        out.write("new")
        dest.write_text("someone else's", encoding="utf-8")
    assert dest.read_text(encoding="utf-8") == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_group_renames_nothing_when_the_block_fails(tmp_path):
    first, second = tmp_path / "1.txt", tmp_path / "2.txt"
    with pytest.raises(ValueError), atomic_outputs([first, second]) as (a, b):
        a.write("one")
        b.write("two")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("index", range(8))
def test_rows_are_streamed_not_collected(tmp_path, index, monkeypatch):
    """Rows are released a chunk at a time: no writer keeps more than one chunk of rows.

    Rows hold no reference cycles, so reference counting frees a dropped row at once.
    (COCO keeps one (confidence, caption) pair per image, never the rows themselves.)
    """
    monkeypatch.setattr(rows_module, "CHUNK_SIZE", 5)
    cases = writers(tmp_path) + [(write_sidecar, tmp_path / "mirror", {}, [])]
    writer, dest, options, _ = cases[index]
    refs: list[weakref.ref] = []

    def rows():
        for i in range(1, 60):
            if i > 7:
                assert refs[i - 8]() is None, f"row {i - 7} still referenced at row {i}"
            row = make_row(i, root=tmp_path, review_outcome="accepted")
            refs.append(weakref.ref(row))
            yield row

    writer(rows(), dest, **options)
    assert len(refs) == 59


# Leftovers of killed writers ------------------------------------------------------------------

PARTIAL = 300_000  # bytes the child writes before it is killed

WRITER = """
import sys, time
from pathlib import Path
from labeler.atomic import atomic_output
with atomic_output(Path(sys.argv[1]), force=True) as out:
    out.write("x" * int(sys.argv[2]))
    out.flush()
    print("ready", flush=True)
    time.sleep(120)
"""


class Writer:
    """A child Python process midway through an atomic write to `dest`, until killed."""

    def __init__(self, dest: Path, size: int = PARTIAL):
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(dest), str(size)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "ready\n", "the writer did not start"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        assert self.process.returncode == -signal.SIGKILL


@pytest.fixture
def writer_processes():
    started: list[Writer] = []
    yield lambda dest, size=PARTIAL: started.append(Writer(dest, size)) or started[-1]
    for writer in started:
        if writer.process.poll() is None:
            writer.kill()


def temporary_files(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.*.tmp"))


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    return ShowTellCaptioner.from_checkpoint(path, device="cpu")


@pytest.fixture
def drafted(store, tmp_path, captioner):
    make.write_many(tmp_path / "photos", 3, size=(48, 40))
    scan(store, [tmp_path / "photos"], workers=1)
    settings = DecodeSettings(beam_size=2, max_len=6, n_best=2)
    caption_images(store, captioner, settings=settings, workers=0, procs=0)
    return store


def test_the_next_export_removes_what_killed_exports_left_and_says_how_much(
    drafted, tmp_path, writer_processes
):
    dest = tmp_path / "big.jsonl"
    for size in (PARTIAL, 1000):
        writer_processes(dest, size).kill()
    leftovers = temporary_files(dest)
    assert len(leftovers) == 2 and sum(p.stat().st_size for p in leftovers) == PARTIAL + 1000
    result = export_drafts(drafted, "jsonl", dest)
    assert (result.removed, result.removed_bytes) == (2, PARTIAL + 1000)
    assert temporary_files(dest) == [] and result.count == 3 and dest.exists()
    again = export_drafts(drafted, "jsonl", dest, force=True)
    assert (again.removed, again.removed_bytes) == (0, 0)


def test_a_live_writers_temporary_file_is_kept(drafted, tmp_path, writer_processes):
    dest = tmp_path / "big.jsonl"
    live = writer_processes(dest)
    writer_processes(dest, 1000).kill()
    (kept,) = [p for p in temporary_files(dest) if p.stat().st_size == PARTIAL]
    result = export_drafts(drafted, "jsonl", dest)
    assert (result.removed, result.removed_bytes) == (1, 1000)
    assert temporary_files(dest) == [kept] and live.process.poll() is None
    live.kill()  # once its writer is dead, the next export takes it
    assert export_drafts(drafted, "jsonl", dest, force=True).removed_bytes == PARTIAL


def test_the_export_command_says_what_it_removed(drafted, tmp_path, writer_processes):
    dest = tmp_path / "big.jsonl"
    writer_processes(dest).kill()
    writer_processes(config_path(tmp_path / "tasks.json"), 200_000).kill()
    args = ["export", "--db", drafted.url, "-f", "jsonl", "-o", str(dest)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "removed 1 leftover temporary file (0.3 MB) of killed exports" in out.output
    # Every file of a pair is cleaned: Label Studio's config beside the tasks.
    args = [*args[:3], "-f", "label-studio", "--url-prefix", "http://x", "-o",
            str(tmp_path / "tasks.json")]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "removed 1 leftover temporary file (0.2 MB) of killed exports" in out.output


def test_remove_leftovers_keeps_open_writers_and_unrelated_names(tmp_path):
    dest = tmp_path / "a.txt"
    unrelated = [tmp_path / ".a.txt.notahex.tmp", tmp_path / ".b.txt.0123abcd.tmp"]
    for path in unrelated:
        path.write_text("keep", encoding="utf-8")
    (tmp_path / ".a.txt.0123abcd.tmp").write_text("dead", encoding="utf-8")  # nobody holds it
    live = AtomicFile(dest, force=False)
    live.handle.write("live")
    live.close()  # closed but not yet renamed: still claimed
    assert remove_leftovers(dest).count == 1
    assert live.tmp.exists() and all(p.exists() for p in unrelated)
    assert not (tmp_path / ".a.txt.0123abcd.tmp").exists()
    live.commit()
    assert dest.read_text(encoding="utf-8") == "live" and not live.tmp.exists()
