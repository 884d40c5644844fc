"""Golden files: every export format's exact bytes for one fixed store, so that a refactor of
the exports shows any change in what reviewers receive as a diff.

The store is written row by row with SQLAlchemy core inserts, every id, hash, score and time
fixed, once per backend: SQLite, and PostgreSQL too when the suite runs against one, compared
with the same files (times are UTC with their offset on both). Each variant exports
through `export_drafts`, the function `labeler export` calls, into a fresh folder. Before
comparing, the test folder's path is replaced by `<ROOT>` in every spelling an export may use
(plain, JSON-escaped, URL-quoted, XML-escaped), and the one value that depends on the clock,
CVAT's <dumped> time, by a fixed word.

A missing golden file fails. To write them: LABELER_UPDATE_GOLDEN=1 pytest
tests/test_golden_exports.py (from SQLite only), then read the diff before committing it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest
from backends import backends
from PIL import Image as PILImage
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from labeler.review.export import export_drafts
from labeler.store import Store, open_store
from labeler.store.drafts import DraftFilter
from labeler.store.models import Caption, CaptionRun, Dataset, Image, Model, Review

GOLDEN = Path(__file__).parent / "data" / "golden"
UPDATE = os.environ.get("LABELER_UPDATE_GOLDEN") == "1"
PLACEHOLDER = "<ROOT>"


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 5, day, hour, minute, tzinfo=dt.timezone.utc)


# --- the fixed store ------------------------------------------------------------------------

DATASETS = [(1, "birds", "birds"), (2, "street", "street")]  # id, name, folder under the root

HASH_SHARED = "5a" * 32  # two images with the same bytes, in two datasets
# id, dataset, relative path, size, width, height, content hash
IMAGES = [
    (1, 1, "robin.png", 1021, 64, 48, "01" * 32),
    (2, 1, "sub dir/blue jay.png", 2048, 80, 60, "02" * 32),
    (3, 1, "café/東京 é.png", 999, 32, 32, "03" * 32),
    (4, 1, "=cmd.png", 512, 16, 16, "04" * 32),  # CSV must defuse the formula
    (5, 1, "dup-a.png", 777, 40, 30, HASH_SHARED),
    (6, 2, "dup-b.png", 777, 40, 30, HASH_SHARED),
    (7, 2, "night/lamp.png", 4096, 120, 90, "07" * 32),
    (8, 2, "crossing.png", 3000, 100, 75, "08" * 32),
    (9, 2, "old.png", 100, 10, 10, "09" * 32),  # its draft is stale: never exported
]

MODEL_HASH = "c0ffee00" * 8
SETTINGS_KEY = "5e77a1b2c3d4e5f6"
SETTINGS = {"beam_size": 3, "max_len": 8, "length_penalty": 0.0, "n_best": 2}

# image id -> drafts by rank: (text, token log-probabilities, p_accept, margin, flags).
# Flags: "unfinished" (no end token: as many log-probabilities as words), "repeated",
# "unknown", "stale".
DRAFTS: dict[int, list[tuple[str, list[float], float, float | None, set[str]]]] = {
    1: [("a small bird on a branch", [-0.1, -0.5, -0.2, -0.3, -0.05, -0.4, -0.02], 0.91, 1.25,
         set()),
        ("a bird sitting on a tree", [-0.1, -0.6, -0.9, -0.3, -0.05, -0.7, -0.03], 0.62, 1.25,
         set())],
    2: [("a blue bird on a fence", [-0.1, -1.2, -0.4, -0.3, -0.2, -0.8, -0.1], 0.48, 0.5,
         set()),
        ('a "blue" bird, on a post', [-0.1, -1.5, -0.4, -0.3, -0.2, -1.1, -0.1], 0.33, 0.5,
         set())],
    3: [("a <unk> near the café", [-0.2, -3.1, -0.6, -0.3, -0.9, -0.1], 0.12, 0.05,
         {"unknown"}),
        ("a street near the café", [-0.2, -2.9, -0.6, -0.3, -0.9, -0.1], 0.15, 0.05, set())],
    4: [("a cat a cat a cat", [-0.3, -0.4, -0.2, -0.1, -0.2, -0.1, -0.9], 0.2, 0.3,
         {"repeated"}),
        ("=SUM(A1) a cat", [-0.3, -2.0, -0.2, -0.4, -0.5], 0.05, 0.3, set())],
    5: [("two birds, one feeder", [-0.4, -0.6, -0.3, -0.7, -0.2], 0.7, 0.9, set()),
        ("two birds\tat a feeder", [-0.4, -0.6, -0.8, -0.9, -0.7, -0.2], 0.4, 0.9, set())],
    6: [("two birds, one feeder", [-0.4, -0.6, -0.3, -0.7, -0.2], 0.7, None, set()),
        ("two birds near a feeder", [-0.4, -0.6, -0.9, -0.8, -0.7, -0.3], 0.38, None, set())],
    7: [("a lamp post at night with a lamp post", [-0.3] * 9, 0.35, 0.02,
         {"unfinished", "repeated"}),
        ("a lamp post at night with a", [-0.3, -0.5, -0.6, -0.4, -0.5, -0.7, -0.6, -0.8], 0.3,
         0.02, set())],
    8: [("cars waiting at a crossing", [-0.1, -0.2, -0.3, -0.25, -0.15, -0.05], 0.88, 2.0,
         set())],  # no alternative: n-best 2 leaves its columns empty
    9: [("an old photo", [-0.5, -0.5, -0.5, -0.1], 0.5, 1.0, {"stale"}),
        ("an old picture", [-0.5, -0.5, -0.9, -0.1], 0.3, 1.0, {"stale"})],
}  # fmt: skip


def caption_id(image_id: int, rank: int) -> int:
    return 10 * image_id + rank


# (image id, outcome, text, reviewer, reviewed_at, imported_at, external id); each judges the
# image's best draft. Image 7 has two reviews: the newer one counts.
REVIEWS = [
    (1, "accepted", "a small bird on a branch", "ana@example.com", at(2, 9), at(3, 8), None),
    (2, "edited", "a blue jay perched on a fence", "ben", at(2, 9, 5), at(3, 8), "ls-202"),
    (3, "rejected", None, "ana@example.com", at(2, 9, 10), at(3, 8), None),
    (4, "skipped", None, "ben", at(2, 9, 15), at(3, 8), None),
    (5, "accepted", None, None, None, at(3, 8, 30), None),  # no review time: import time counts
    (7, "rejected", None, "ana@example.com", at(2, 10), at(3, 8), None),
    (7, "edited", "a street lamp at night", "carol", at(2, 11), at(3, 8), None),
]


def build_images(root: Path) -> None:
    """Tiny PNGs at the images' paths (the sidecars go beside them)."""
    for image_id, dataset_id, path, *_ in IMAGES:
        target = root / DATASETS[dataset_id - 1][2] / path
        target.parent.mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", (2, 2), (image_id * 20, 100, 200)).save(target)


def build_store(url: str, root: Path) -> Store:
    build_images(root)
    store = open_store(url)
    with store.write() as session:
        conn = session.connection()
        conn.execute(Dataset.__table__.insert(), [
            {"id": id_, "name": name, "root": str(root / folder),
             "root_raw": os.fsencode(root / folder), "created_at": at(1, 8)}
            for id_, name, folder in DATASETS
        ])  # fmt: skip
        conn.execute(Image.__table__.insert(), [
            {"id": id_, "dataset_id": ds, "path": path, "path_raw": path.encode(), "size": size,
             "mtime_ns": 1714550400_000000000 + id_, "content_hash": content_hash,
             "format": "PNG", "width": width, "height": height, "mode": "RGB", "frames": 1,
             "status": "ok", "reason": None, "first_seen_at": at(1, 8), "scanned_at": at(1, 8)}
            for id_, ds, path, size, width, height, content_hash in IMAGES
        ])  # fmt: skip
        conn.execute(Model.__table__.insert(), [
            {"id": 1, "content_hash": MODEL_HASH, "name": "show-tell-golden",
             "family": "show-tell", "source": "/models/golden.pt", "info": {"vocab": 9000},
             "registered_at": at(1, 7)}
        ])  # fmt: skip
        conn.execute(CaptionRun.__table__.insert(), [
            {"id": 1, "model_id": 1, "settings_key": SETTINGS_KEY, "settings": SETTINGS,
             "status": "completed", "host": "golden-host", "pid": 4242,
             "process_started": 1714550000.0, "started_at": at(1, 9), "finished_at": at(1, 10),
             "counts": {"captioned": 9}, "timings": {"decode": 1.5}, "error": None}
        ])  # fmt: skip
        conn.execute(Caption.__table__.insert(), [
            draft_row(image_id, rank, *draft)
            for image_id, drafts in DRAFTS.items()
            for rank, draft in enumerate(drafts)
        ])  # fmt: skip
        conn.execute(Review.__table__.insert(), [
            {"id": number, "image_id": image_id, "caption_id": caption_id(image_id, 0),
             "text": text, "outcome": outcome, "reviewer": reviewer, "reviewed_at": reviewed,
             "source": "reviews/round-1.csv", "draft_text": DRAFTS[image_id][0][0],
             "external_id": external, "external_updated_at": reviewed if external else None,
             "fingerprint": f"{number:064x}", "imported_at": imported}
            for number, (image_id, outcome, text, reviewer, reviewed, imported, external)
            in enumerate(REVIEWS, start=1)
        ])  # fmt: skip
    return store


def draft_row(image_id, rank, text, logprobs, p_accept, margin, flags):  # type: ignore[no-untyped-def]
    log_likelihood = round(sum(logprobs), 6)
    return {
        "id": caption_id(image_id, rank), "image_id": image_id, "model_id": 1,
        "settings_key": SETTINGS_KEY, "run_id": 1, "rank": rank, "text": text,
        "log_likelihood": log_likelihood, "num_tokens": len(logprobs),
        # fixed decimals, not exp(): the bytes must not hang on the platform's libm
        "confidence": round(0.5 + log_likelihood / 20, 6), "p_accept": p_accept,
        "calibrator_id": None, "score": round(log_likelihood / len(logprobs), 6),
        "token_logprobs": logprobs, "margin": margin, "finished": "unfinished" not in flags,
        "repeated_ngram": "repeated" in flags, "has_unknown": "unknown" in flags,
        "stale": "stale" in flags, "created_at": at(1, 9, 30 + rank),
    }  # fmt: skip


# --- the variants ---------------------------------------------------------------------------

URL_PREFIX = "https://images.example/set/"


def files(*names: str) -> Callable[[Path, Path], dict[str, Path]]:
    """Outputs that are files in the output folder, by golden suffix."""
    return lambda root, out: {name: out / name for name in names}


# name -> (format, export_drafts keywords, dest (relative to the output folder; None: no -o;
# "ROOT": the images' root), where the outputs are)
VARIANTS = {
    "csv": ("csv", {}, "drafts.csv", files("drafts.csv")),
    "csv-n-best-2": ("csv", {"n_best": 2}, "drafts.csv", files("drafts.csv")),
    "csv-max-p-accept-sort-path": (
        "csv", {"spec": DraftFilter(max_p_accept=0.5), "sort": "path"}, "drafts.csv",
        files("drafts.csv"),
    ),
    "jsonl": ("jsonl", {}, "drafts.jsonl", files("drafts.jsonl")),
    "jsonl-n-best-2": ("jsonl", {"n_best": 2}, "drafts.jsonl", files("drafts.jsonl")),
    "json": ("json", {}, "drafts.json", files("drafts.json")),
    "json-n-best-2": ("json", {"n_best": 2}, "drafts.json", files("drafts.json")),
    "json-reviewed-birds-sort-confidence": (
        "json", {"spec": DraftFilter(datasets=["birds"], review=["reviewed"]),
                 "sort": "-confidence"},
        "drafts.json", files("drafts.json"),
    ),
    "label-studio-document-root": (
        "label-studio", {"document_root": "ROOT"}, "tasks.json",
        files("tasks.json", "tasks.config.xml"),
    ),
    "label-studio-url-prefix-n-best-2": (
        "label-studio", {"url_prefix": URL_PREFIX, "n_best": 2}, "tasks.json",
        files("tasks.json", "tasks.config.xml"),
    ),
    "coco": ("coco", {}, "results.json", files("results.json")),
    "coco-ground-truth": (
        "coco", {"ground_truth": "gt.json"}, "results.json", files("results.json", "gt.json"),
    ),
    # The hf writer writes metadata.jsonl only (no Arrow or Parquet), so its bytes compare.
    "hf": ("hf", {}, "ROOT", lambda root, out: {"metadata.jsonl": root / "metadata.jsonl"}),
    "sidecar-txt-beside-images": ("sidecar", {}, None, None),
    "sidecar-caption-mirror": ("sidecar", {"extension": ".caption"}, "mirror", None),
    "cvat": ("cvat", {}, "annotations.xml", files("annotations.xml")),
}  # fmt: skip


def run_variant(store: Store, name: str, root: Path, out: Path) -> dict[str, bytes]:
    """Export one variant; its outputs' bytes by golden file name."""
    fmt, options, dest_name, outputs = VARIANTS[name]
    options = dict(options)
    if options.get("document_root") == "ROOT":
        options["document_root"] = root
    if "ground_truth" in options:
        options["ground_truth"] = out / options["ground_truth"]
    dest = root if dest_name == "ROOT" else None if dest_name is None else out / dest_name
    result = export_drafts(store, fmt, dest, **options)
    if fmt == "sidecar":
        return {f"{name}.files.json": sidecars(result, root, dest, options.get("extension"))}
    return {f"{name}.{suffix}": path.read_bytes() for suffix, path in outputs(root, out).items()}


def sidecars(result, root: Path, dest: Path | None, extension: str | None) -> bytes:  # type: ignore[no-untyped-def]
    """A folder's sidecars as one JSON file: the result's counts and {relative path: text}
    (each sidecar read as strict UTF-8, so equal texts are equal bytes)."""
    folder = dest if dest is not None else root
    found = sorted(folder.rglob(f"*{extension or '.txt'}"))
    texts = {p.relative_to(folder).as_posix(): p.read_bytes().decode("utf-8") for p in found}
    summary = {"count": result.count, "skipped": result.skipped,
               "conflicts": result.conflicts, "files": texts}  # fmt: skip
    return (json.dumps(summary, ensure_ascii=False, indent=1) + "\n").encode()


def placeholders(data: bytes, base: Path) -> bytes:
    """The test folder's path as `<ROOT>` in each spelling an export may use; CVAT's dump time
    as DUMPED_AT."""
    text = str(base)
    spellings = {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1],
                 quote(text), escape(text)}  # fmt: skip
    for spelling in sorted(spellings, key=len, reverse=True):
        data = data.replace(spelling.encode(), PLACEHOLDER.encode())
    return re.sub(rb"<dumped>[^<]*</dumped>", b"<dumped>DUMPED_AT</dumped>", data)


@pytest.fixture(scope="module", params=backends())
def built(request, tmp_path_factory) -> Iterator[tuple[Store, Path]]:
    """The fixed store on one backend, built once for every variant (each exports into a
    folder of its own), and the folder that becomes `<ROOT>`. PostgreSQL gets a schema of its
    own, as conftest's `store_url` gives (that fixture is per test; building is most of the
    cost)."""
    base = tmp_path_factory.mktemp("golden")
    if request.param == "sqlite":
        store = build_store(str(base / "store.db"), base / "images")
        yield store, base
        store.dispose()
        return
    database = request.getfixturevalue("postgres_database")
    schema = f"golden_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(database).update_query_dict({"options": f"-csearch_path={schema}"})
    store = build_store(url.render_as_string(hide_password=False), base / "images")
    try:
        yield store, base
    finally:
        store.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_matches_its_golden_files(variant, built):
    store, base = built
    root, out = base / "images", base / "out" / variant
    out.mkdir(parents=True)
    outputs = run_variant(store, variant, root, out)
    for golden_name, data in outputs.items():
        data = placeholders(data, base)
        assert str(base.parent).encode() not in data, f"{golden_name}: the test folder leaked"
        golden = GOLDEN / golden_name
        if UPDATE and store.is_sqlite:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes(data)
            continue
        assert golden.exists(), f"no golden file {golden}: run with LABELER_UPDATE_GOLDEN=1"
        expected = golden.read_bytes()
        # As text for pytest's diff; surrogateescape keeps the comparison exact on any bytes.
        assert data.decode("utf-8", "surrogateescape") == expected.decode(
            "utf-8", "surrogateescape"
        ), golden_name
