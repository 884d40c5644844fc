"""Store failures the user can cause: a store that is not there, a URL that does not parse, a
store that may not be written. Each is one line naming the store and exit code 1, and none of
them creates or changes a store."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import imagefactory as make
import pytest
from asnobody import run_as_nobody
from captionkit import tiny_checkpoint
from sqlalchemy import func, select
from typer.testing import CliRunner

from labeler.caption.job import caption_images
from labeler.cli import app
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.review.export import export_drafts
from labeler.store import open_store
from labeler.store.models import Image, Review

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


READ_COMMANDS = [
    ["stats"],
    ["datasets"],
    ["export", "-f", "csv", "-o", "out.csv"],
    ["report", "-o", "report.html"],
    ["calibrate"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_a_read_command_on_a_missing_store_says_so_and_creates_nothing(tmp_path, command):
    db = tmp_path / "absent.db"
    line = one_line_error(invoke(*command, "--db", db))
    assert line == f"Error: no store at {db}: run labeler scan first"
    assert not db.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no export, no report either


def test_the_default_store_is_not_created_by_a_read_command_either(tmp_path):
    line = one_line_error(invoke("stats"))  # LABELER_DB points at tmp_path/labeler.db
    assert line == f"Error: no store at {tmp_path / 'labeler.db'}: run labeler scan first"
    assert not (tmp_path / "labeler.db").exists()


def test_a_write_command_still_creates_the_store(tmp_path):
    make.rgb_png(tmp_path / "photos", "a.png")
    assert invoke("scan", tmp_path / "photos", "--db", tmp_path / "new.db").exit_code == 0
    assert (tmp_path / "new.db").exists()
    listed = invoke("datasets", "--json", "--db", tmp_path / "new.db")
    assert json.loads(listed.stdout)[0]["name"] == "photos"


@pytest.mark.parametrize("command", [["datasets"], ["stats"], ["scan", "."]])
def test_a_malformed_url_is_one_line_naming_it_without_the_password(command):
    line = one_line_error(invoke(*command, "--db", "postgresql://a:secret@[::1"))
    assert line == "Error: not a database path or URL: postgresql+psycopg://a:***@[::1"


# A read-only store, for real: tests run as root, which ignores permissions, so the command runs
# in a child that dropped to nobody, in a folder outside pytest's private temporary tree.


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    return ShowTellCaptioner.from_checkpoint(path, device="cpu")


@pytest.fixture
def shared():
    folder = Path(tempfile.mkdtemp(prefix="labeler-ro-"))
    folder.chmod(0o777)
    yield folder
    for path in (folder, *folder.rglob("*")):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def _drafted_store(shared: Path, captioner) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """A store with drafts in shared/store/, and a reviewed CSV that accepts the first one."""
    (shared / "store").mkdir()
    db = shared / "store" / "s.db"
    make.write_many(shared / "photos", 3, size=(48, 40))
    store = open_store(db)
    scan(store, [shared / "photos"], workers=0)
    caption_images(store, captioner, settings=DecodeSettings(beam_size=2, max_len=6),
                   workers=0, procs=0)  # fmt: skip
    reviewed = shared / "reviewed.csv"
    export_drafts(store, "csv", reviewed)
    store.dispose()  # the last connection closes: the WAL is folded back in and removed
    with reviewed.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["outcome"] = "accepted"
    with reviewed.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    make.rgb_png(shared / "photos", "new.png")  # so that a scan has something to write
    return db, reviewed


def _invoke_as_nobody(cwd: Path, *args: object) -> tuple[int, str]:
    """Run the CLI in a child that dropped to nobody: (exit code, stderr)."""

    def run() -> dict:
        result = invoke(*args)
        raised = result.exception
        crash = None if raised is None or isinstance(raised, SystemExit) else repr(raised)
        return {"exit_code": result.exit_code, "stderr": result.stderr, "crash": crash}

    out = run_as_nobody(cwd, run)
    assert out["crash"] is None, f"a traceback, not a message: {out['crash']}"
    return out["exit_code"], out["stderr"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
@pytest.mark.parametrize("locked", ["file", "folder", "new-in-folder"])
@pytest.mark.parametrize("command", ["scan", "import"])
def test_a_read_only_store_is_one_line_and_stays_unchanged(shared, captioner, locked, command):
    db, reviewed = _drafted_store(shared, captioner)
    if locked == "file":  # the folder is writable: the store opens, its first write fails
        db.chmod(0o444)
        db.parent.chmod(0o777)
        why = "the file's permissions do not allow writing"
    else:  # the file is writable itself, but WAL mode must create files beside it
        db.chmod(0o666)
        db.parent.chmod(0o555)
        why = f"its folder {db.parent} does not allow writing"
    before = _digest(db)
    target = db.with_name("new.db") if locked == "new-in-folder" else db
    what = shared / "photos" if command == "scan" else reviewed
    code, stderr = _invoke_as_nobody(shared, command, what, "--db", target)
    assert code == 1, stderr
    assert stderr.strip().splitlines() == [f"Error: the store {target} is read-only: {why}"]
    left = {p.name: p.stat().st_size for p in db.parent.iterdir()}
    assert left.keys() <= {"s.db", "s.db-wal", "s.db-shm"}  # a reader's WAL index, no new store
    assert left.get("s.db-wal", 0) == 0  # and nothing written to the WAL
    assert _digest(db) == before
    store = open_store(db, create=False)  # as root, who may write: nothing was added
    try:
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(Image)) == 3
            assert session.scalar(select(func.count()).select_from(Review)) == 0
    finally:
        store.dispose()
