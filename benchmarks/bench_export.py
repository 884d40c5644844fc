"""Exports and imports through the store: rows per second and peak memory, side by side.

Fills a SQLite store with N images and their drafts (bulk inserts, no model), then, each in a
fresh process so peak memory is its own: `export_drafts` to CSV and to JSONL for N and N/10
drafts, and `import_reviews` of reviewed files (our CSV, and our JSON: one array) of M and M/10
rows, every row edited, where M is `--import-rows` (N by default). Goals (issue 6): one million
rows exported in at most 15 s on this CPU; memory flat (peak at N no more than a little above
peak at N/10). Import (issue 11, item 16): peak resident memory at M rows at most 1.2 times
that at M/10; the reviewed files are written straight from the store, not through an export.

Where the time goes: `read` streams the N drafts out of the store without writing anything
(the query, the driver's rows, the DraftChunks); an export's time less that is the formatting
and writing. Times include opening the store, not the imports. CPU seconds (of the writing
process) are printed beside wall seconds: on a shared machine the wall clock also counts the
time other processes had. An export of 20,000 drafts or more reads in a child process
(labeler/review/readahead.py); its peak memory is printed beside the writer's, and "memory flat"
compares their sum.

    python benchmarks/bench_export.py                   # 1,000,000 drafts, imports of 1M and 100k
    python benchmarks/bench_export.py --rows 100000     # a quick run
    python benchmarks/bench_export.py --skip-export     # the imports only (about 9 minutes)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labeler.store import open_store  # noqa: E402
from labeler.store.models import Caption, CaptionRun, Dataset, Image, Model  # noqa: E402

WORDS = [
    "a", "the", "red", "blue", "green", "small", "large", "circle", "square", "triangle", "on",
    "of", "left", "right",
]  # fmt: skip


def fill(db: Path, rows: int, dataset: str) -> None:
    store = open_store(db)
    rng = random.Random(0)
    with store.write() as session:
        if session.query(Model).count() == 0:
            session.add(Model(id=1, content_hash="ab" * 32, name="show-tell", family="show-tell"))
            session.flush()
            session.add(
                CaptionRun(model_id=1, settings_key="bench", settings={}, status="completed")
            )
        ds = Dataset(name=dataset, root=f"/data/{dataset}", root_raw=f"/data/{dataset}".encode())
        session.add(ds)
        session.flush()
        dataset_id = ds.id
    images, captions = Image.__table__, Caption.__table__
    chunk = 20_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        with store.write() as session:
            conn = session.connection()
            rows_in = [_image(dataset_id, start + i) for i in range(n)]
            first = conn.execute(images.insert().returning(images.c.id), rows_in).scalars().all()
            conn.execute(captions.insert(), [_draft(rng, image_id) for image_id in first])
    store.dispose()


def _image(dataset_id: int, index: int) -> dict:
    path = f"d{index // 1000:04d}/img_{index:07d}.jpg"
    return {
        "dataset_id": dataset_id, "path": path, "path_raw": path.encode(), "size": 50_000,
        "mtime_ns": 0, "content_hash": f"{dataset_id:08x}{index:056x}", "format": "JPEG",
        "width": 640, "height": 480, "mode": "RGB", "frames": 1, "status": "ok", "reason": None,
    }  # fmt: skip


def _draft(rng: random.Random, image_id: int) -> dict:
    words = rng.choices(WORDS, k=rng.randint(5, 12))
    logprobs = [-rng.random() * 2 for _ in range(len(words) + 1)]
    total = sum(logprobs)
    return {
        "image_id": image_id, "model_id": 1, "settings_key": "bench", "rank": 0,
        "text": " ".join(words), "log_likelihood": total, "num_tokens": len(logprobs),
        "confidence": math.exp(total / len(logprobs)), "score": total,
        "token_logprobs": logprobs, "margin": rng.random(), "finished": True,
        "repeated_ngram": False, "has_unknown": False, "stale": False,
    }  # fmt: skip


CHILD = """
import json, multiprocessing, resource, sys, threading, time
sys.path.insert(0, {root!r})
from pathlib import Path
from labeler.store import open_store
from labeler.store.drafts import DraftFilter, iter_drafts
reader_peak_kib, done = [0], threading.Event()
def watch():  # the export's reader process (labeler/review/readahead.py): its peak resident memory
    while not done.wait(0.05):
        for child in multiprocessing.active_children():
            try:
                status = open(f"/proc/{{child.pid}}/status").read()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    reader_peak_kib[0] = max(reader_peak_kib[0], int(line.split()[1]))
threading.Thread(target=watch, daemon=True).start()
start, cpu = time.perf_counter(), time.process_time()
store = open_store({db!r})
spec = DraftFilter(datasets=[{dataset!r}])
if {kind!r} == "import":
    from labeler.review.importer import import_reviews
    result = import_reviews(store, Path({path!r}))
    count = result.added
elif {kind!r} == "read":
    from labeler.records import collector_paused
    with store.session() as session, collector_paused():
        count = sum(len(chunk) for chunk in iter_drafts(session, spec).chunks())
else:
    from labeler.review.export import export_drafts
    count = export_drafts(store, {kind!r}, Path({path!r}), spec=spec, force=True).count
elapsed = time.perf_counter() - start
done.set()
print(json.dumps({{"count": count, "seconds": elapsed, "cpu": time.process_time() - cpu,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "reader_peak_mib": reader_peak_kib[0] / 1024}}))
"""


def child(kind: str, db: Path, path: Path, dataset: str) -> dict:
    code = CHILD.format(root=str(ROOT), db=str(db), kind=kind, path=str(path), dataset=dataset)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _total(result: dict) -> float:
    return result["peak_mib"] + result["reader_peak_mib"]


def _mib(result: dict) -> str:
    reader = result["reader_peak_mib"]
    return f"{result['peak_mib']:.0f} MiB" + (f" + reader {reader:.0f} MiB" if reader else "")


def _us(result: dict, key: str) -> float:
    return round(result[key] / result["count"] * 1e6, 1)


REVIEWED = ("image_id", "path", "content_hash", "caption_id", "draft_caption",
            "reviewed_caption", "outcome")  # fmt: skip


def reviewed_file(db: Path, path: Path, dataset: str, rows: int) -> Path:
    """`rows` drafts of `dataset`, every one edited as a reviewer would, in our CSV or our
    JSON (one array, as `labeler export -f json` writes), streamed from the store."""
    from sqlalchemy import select

    store = open_store(db)
    query = (
        select(Image.id, Image.path, Image.content_hash, Caption.id, Caption.text)
        .join(Caption, Caption.image_id == Image.id)
        .join(Dataset, Dataset.id == Image.dataset_id)
        .where(Dataset.name == dataset, Caption.rank == 0)
        .order_by(Image.id)
        .limit(rows)
    )
    with store.session() as session, open(path, "w", newline="", encoding="utf-8") as out:
        records = (
            (*row, row[-1] + " indeed", "")
            for row in session.execute(query.execution_options(yield_per=10_000))
        )
        if path.suffix == ".csv":
            writer = csv.writer(out)
            writer.writerow(REVIEWED)
            writer.writerows(records)
        else:
            out.write("[")
            for index, record in enumerate(records):
                out.write(",\n" if index else "\n")
                out.write(json.dumps(dict(zip(REVIEWED, record, strict=True))))
            out.write("\n]\n")
    store.dispose()
    return path


def measure_imports(db: Path, tmp: Path, rows: int) -> None:
    """Import M/10 and M reviewed rows, each file in a fresh process; peak memory side by side."""
    for suffix in (".csv", ".json"):
        runs = []
        for dataset, n in (("small", rows // 10), ("large", rows)):
            path = reviewed_file(db, tmp / f"reviewed-{n}{suffix}", dataset, n)
            runs.append(child("import", db, path, dataset))
            path.unlink()
        small, large = runs
        ratio = large["peak_mib"] / small["peak_mib"]
        print(f"import {suffix[1:]:4}: {small['count']:>8} rows in {small['seconds']:6.1f} s, "
              f"peak {small['peak_mib']:.0f} MiB; {large['count']:>8} rows in "
              f"{large['seconds']:6.1f} s ({large['count'] / large['seconds']:.0f} rows/s), "
              f"peak {large['peak_mib']:.0f} MiB; ratio {ratio:.2f} (goal: <= 1.2)",
              flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--import-rows", type=int, help="M; default: --rows (at most that)")
    parser.add_argument("--skip-export", action="store_true", help="Measure the imports only.")
    args = parser.parse_args()
    import_rows = min(args.import_rows or args.rows, args.rows)
    small_rows = max(args.rows // 10, import_rows // 10)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "bench.db"
        start = time.perf_counter()
        fill(db, args.rows, "large")
        fill(db, small_rows, "small")
        print(f"filled a store with {args.rows} + {small_rows} drafts in "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        if not args.skip_export:
            measure_exports(db, tmp)
        measure_imports(db, tmp, import_rows)


def measure_exports(db: Path, tmp: Path) -> None:
    """Read N drafts, then export N and N/10 to CSV and JSONL."""
    read = child("read", db, tmp / "unused", "large")
    print(f"read        : {read['count']:>8} rows in {read['seconds']:6.1f} s "
          f"({read['cpu']:.1f} s CPU) = {_us(read, 'seconds')} us/row "
          f"({_us(read, 'cpu')} CPU)")  # fmt: skip
    for kind in ("csv", "jsonl"):
        small = child(kind, db, tmp / f"small.{kind}", "small")
        large = child(kind, db, tmp / f"large.{kind}", "large")
        print(f"export {kind:5}: {large['count']:>8} rows in {large['seconds']:6.1f} s "
              f"({large['cpu']:.1f} s CPU) = {large['count'] / large['seconds']:8.0f} rows/s "
              f"(goal: 1M in <= 15 s); {_us(large, 'seconds')} us/row, of which "
              f"{_us(large, 'seconds') - _us(read, 'seconds'):.1f} formatting and writing; "
              f"peak {_mib(small)} at {small['count']} rows, {_mib(large)} at "
              f"{large['count']} (ratio {_total(large) / _total(small):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
