"""`labeler import` reads the file a chunk at a time, twice (issue 11, item 16): memory stays flat
as the file grows, every record is checked before the store is written, a file changed between the
passes stores nothing; and the streaming readers give what reading the whole file gave."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest
from sqlalchemy import func, select

from labeler.errors import FormatError, InputError
from labeler.formats import streams
from labeler.formats.repeats import Repeats
from labeler.formats.reviews import read_reviews
from labeler.review import importer
from labeler.review.importer import import_reviews
from labeler.store import Store, open_store
from labeler.store.models import Caption, Dataset, Image, Model, Review

ImageRow, CaptionRow = Image.__table__, Caption.__table__


def _fill(store, n: int) -> None:
    """`n` images, each with one draft, written straight into the store."""
    with store.write() as session:
        session.add(Model(id=1, content_hash="ab" * 32, name="m", family="show-tell"))
        session.add(Dataset(id=1, name="d", root="/data", root_raw=b"/data"))
        session.flush()
        conn = session.connection()
        images = [{"dataset_id": 1, "path": f"{i:06d}.jpg", "path_raw": f"{i:06d}.jpg".encode(),
                   "content_hash": f"{i:064x}", "status": "ok"} for i in range(n)]  # fmt: skip
        ids = conn.execute(ImageRow.insert().returning(ImageRow.c.id), images).scalars().all()
        conn.execute(CaptionRow.insert(), [
            {"image_id": i, "model_id": 1, "settings_key": "k", "rank": 0, "text": "a red dot",
             "log_likelihood": -1.0, "num_tokens": 4, "confidence": 0.5, "score": -1.0,
             "token_logprobs": [-0.25] * 4, "margin": 0.1, "finished": True,
             "repeated_ngram": False, "has_unknown": False, "stale": False} for i in ids
        ])  # fmt: skip


def _reviewed(tmp_path, n: int, name: str = "reviewed.jsonl"):
    """Every one of `n` drafts edited, with a long note as reviewers' files carry."""
    path = tmp_path / name
    with open(path, "w") as out:
        for i in range(n):
            record = {"image_id": i + 1, "path": f"{i:06d}.jpg", "draft_caption": "a red dot",
                      "reviewed_caption": f"a red dot number {i}", "note": "x" * 2000}  # fmt: skip
            out.write(json.dumps(record) + "\n")
    return path


def _count(store) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(Review))


def _peak(store: Store, path) -> int:
    tracemalloc.start()
    try:
        assert import_reviews(store, path).added > 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file(tmp_path, monkeypatch):
    """Ten times the records, the same peak: the file is never held whole (it was, at about
    4 KB a record). Python's own allocations, traced; the benchmark measures the process."""
    monkeypatch.setattr(importer, "RECORDS", 200)
    store = open_store(tmp_path / "store.db")
    _fill(store, 6000)
    small = _peak(store, _reviewed(tmp_path, 600, "small.jsonl"))
    large = _peak(store, _reviewed(tmp_path, 6000, "large.jsonl"))
    assert _count(store) == 6600
    assert large < 1.3 * small, (small, large)
    store.dispose()


def test_every_record_is_checked_before_the_store_is_written(store, tmp_path, monkeypatch):
    _fill(store, 30)
    path = _reviewed(tmp_path, 30)
    with open(path, "a") as out:
        out.write(json.dumps({"image_id": 999, "outcome": "rejected"}) + "\n")
    monkeypatch.setattr(importer, "RECORDS", 7)
    writes = []
    monkeypatch.setattr(Store, "write", lambda self: writes.append(self) or 1 / 0)
    with pytest.raises(FormatError, match="^reviewed.jsonl line 31: no image with id 999"):
        import_reviews(store, path)
    assert writes == [] and _count(store) == 0


def test_a_file_changed_between_the_passes_stores_nothing(store, tmp_path, monkeypatch):
    _fill(store, 10)
    path = _reviewed(tmp_path, 5)
    check = importer._check

    def check_then_change(*args, **kwargs):
        check(*args, **kwargs)
        with open(path, "a") as out:  # a reviewer saves again: a valid record, never checked
            out.write(json.dumps({"image_id": 9, "outcome": "rejected"}) + "\n")

    monkeypatch.setattr(importer, "_check", check_then_change)
    with pytest.raises(InputError, match="reviewed.jsonl changed while it was imported"):
        import_reviews(store, path)
    assert _count(store) == 0


def test_repeats_are_found_across_spilled_buckets(store, tmp_path, monkeypatch):
    """Records spilled to disk every three, in four buckets: an exact repeat far from its first
    is imported once, and a contradiction is refused naming both lines."""
    monkeypatch.setattr(Repeats, "SPILL", 3)
    monkeypatch.setattr(Repeats, "BUCKETS", 4)
    monkeypatch.setattr(importer, "RECORDS", 5)
    _fill(store, 40)
    lines = [{"image_id": i, "reviewed_caption": f"dot {i}"} for i in range(1, 41)]
    lines.append({"image_id": 3, "reviewed_caption": "dot  3"})  # the same, spaced
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [r.where for r in read_reviews(path)][-1] == "r.jsonl line 40"
    result = import_reviews(store, path)
    assert (result.records, result.added) == (40, 40)
    lines.insert(30, {"image_id": 17, "outcome": "rejected"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(FormatError, match="^r.jsonl line 17 and line 31: two different reviews "
                       "of the image with image_id 17; keep one$"):  # fmt: skip
        import_reviews(store, path)
    assert _count(store) == 40


DOCUMENTS = [
    "[]",
    " \n [ ] \n",
    '[{"a": 1}, {"b": [1, 2.5e3, -0.0, true, false, null]}, "x\\u00e9\\ud83d\\ude00", 12345]',
    '[\n  {"caption": "' + "long " * 500 + '"},\n  1234567890123,\n  {"n": {"m": [[]]}}\n]\n',
]
BAD = [
    "[", "[1", "[1 2]", "[1,]", '[{"a": tru}]', '[{"a": "b\\u12"}]', '[1] x', '["abc',
    '[{"a": 1}\n, {"b": }]', '[{"a": "\x01"}]', '[\n\n  {"a" 1}]', "[1,\n 2,\n 3\n,\n",
]  # fmt: skip


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
def test_the_json_array_reader_gives_what_json_loads_gives(monkeypatch, block):
    """Elements cut at every block boundary come out whole; a bad document names the line and
    column json.loads names, with its message."""
    monkeypatch.setattr(streams, "BLOCK", block)
    for document in DOCUMENTS:
        assert list(streams.json_array_items(io.StringIO(document), "x")) == json.loads(document)
    for document in BAD:
        try:
            json.loads(document)
        except json.JSONDecodeError as exc:
            expected = f"x line {exc.lineno} column {exc.colno}: bad JSON: {exc.msg}"
        with pytest.raises(FormatError) as raised:
            list(streams.json_array_items(io.StringIO(document), "x"))
        assert str(raised.value) == expected, document


def test_a_bad_byte_deep_in_a_file_is_placed_exactly(tmp_path, monkeypatch):
    """Past the text layer's blocks, and with a character cut by a block boundary before it."""
    monkeypatch.setattr(streams, "BLOCK", 4096)
    rows = "".join(f"{i},a.png,café {i},caffè {i},\n" for i in range(3000))
    data = (
        b"\xef\xbb\xbf" + ("image_id,path,draft_caption,reviewed_caption,outcome\n" + rows).encode()
    )
    data += b"9,b.png,a dog,un caf\xe9,\n"
    path = tmp_path / "deep.csv"
    path.write_bytes(data)
    offset = len(data) - 3
    with pytest.raises(
        FormatError, match=rf"^deep.csv line 3002: not UTF-8 text \(byte 0xe9 at offset {offset}\)"
    ):
        read_reviews(path)
