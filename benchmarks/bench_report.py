"""HTML report throughput: thumbnails per second against making the same thumbnails in a loop.

    python benchmarks/bench_report.py                  # 3,000 generated 640x480 JPEGs
    python benchmarks/bench_report.py --images 500     # a quick look

The images are real files registered by a real scan; their drafts (three per image, a third of
them reviewed) are synthetic rows written straight into the store, since the model is not what
is measured. Side by side in one run:
- the floor: `load_rgb` with JPEG draft mode + thumbnail + JPEG encode, in one process, and the
  same with a full decode (what draft mode saves);
- `write_report` with thumbnails inline (workers=0), with the default pool, and without
  thumbnails (the cost of the store, the HTML and the atomic writes alone);
each report in a fresh subprocess so that its peak resident memory is its own. Absolute numbers
on a shared machine are noise; compare the lines of one run.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import imagefactory  # noqa: E402
from sqlalchemy import select  # noqa: E402

from labeler.files import decode  # noqa: E402
from labeler.files.scan import scan  # noqa: E402
from labeler.review.report import THUMB_SIZE, write_report  # noqa: E402
from labeler.store import open_store  # noqa: E402
from labeler.store.captions import register_model, start_run  # noqa: E402
from labeler.store.models import Caption, Image, Review  # noqa: E402

WORDS = [
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "red",
    "blue",
    "small",
    "large",
    "street",
    "table",
    "on",
    "in",
    "with",
    "next",
    "to",
    "the",
]


def make_store(folder: Path, db: Path, count: int, size: tuple[int, int]) -> None:
    for start in range(0, count, 1000):
        part = folder / f"part{start // 1000:03d}"
        imagefactory.write_many(part, min(1000, count - start), size=size, start=start)
    store = open_store(str(db))
    scan(store, [folder])
    rng = random.Random(0)
    with store.write() as session:
        model = register_model(
            session, content_hash="ab" * 32, name="show-tell", family="show-tell", source=None,
            info=None,
        )  # fmt: skip
        run = start_run(session, model_id=model, settings_key="bench", settings={}, host="", pid=0)
        image_ids = session.scalars(select(Image.id).where(Image.status == "ok")).all()
        rows = [draft(rng, i, rank, model, run) for i in image_ids for rank in range(3)]
        session.execute(Caption.__table__.insert(), rows)
        outcomes = ["accepted", "accepted", "edited", "rejected"]
        reviews = [
            {"image_id": i, "text": "a corrected caption", "outcome": rng.choice(outcomes),
             "fingerprint": f"bench:{i}"}
            for i in image_ids if i % 3 == 0
        ]  # fmt: skip
        session.execute(Review.__table__.insert(), reviews)
    store.dispose()


def draft(rng: random.Random, image_id: int, rank: int, model: int, run: int) -> dict:
    words = rng.choices(WORDS, k=rng.randint(4, 10))
    logprobs = [-rng.expovariate(1.5) for _ in range(len(words) + 1)]
    ll = sum(logprobs)
    return {
        "image_id": image_id, "model_id": model, "settings_key": "bench", "run_id": run,
        "rank": rank, "text": " ".join(words), "log_likelihood": ll,
        "num_tokens": len(logprobs), "confidence": math.exp(ll / len(logprobs)), "score": ll,
        "token_logprobs": logprobs, "margin": 0.5, "finished": True, "repeated_ngram": False,
        "has_unknown": False, "stale": False,
    }  # fmt: skip


def floor(folder: Path, draft: bool) -> tuple[int, float]:
    """Thumbnails made one after another in this process, as the report's workers make them."""
    paths = sorted(p for p in folder.rglob("*.jpg"))
    started = time.perf_counter()
    for path in paths:
        image = decode.load_rgb(path, draft_size=(THUMB_SIZE, 1) if draft else None)
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        image.save(io.BytesIO(), "JPEG", quality=70)
    return len(paths), time.perf_counter() - started


def child(db: str, dest: str, options: str) -> None:
    store = open_store(db)
    started = time.perf_counter()
    result = write_report(store, Path(dest), force=True, **json.loads(options))
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for p in [result.index, *result.pages])
    print(json.dumps({
        "drafts": result.drafts, "pages": len(result.pages), "thumbnails": result.thumbnails,
        "elapsed_s": elapsed, "bytes": size,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))  # fmt: skip


def run_report(db: Path, dest: Path, **options) -> dict:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(db), str(dest), json.dumps(options)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", default="640x480", help="image size, WxH")
    parser.add_argument("--workers", type=int, default=None, help="pool size; default: cores")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder, db, dest = Path(tmp) / "images", Path(tmp) / "bench.db", Path(tmp) / "r.html"
        started = time.perf_counter()
        make_store(folder, db, args.images, (width, height))
        print(f"{args.images} JPEGs of {width}x{height} generated, scanned and given drafts in "
              f"{time.perf_counter() - started:.1f} s; {os.cpu_count()} cores")  # fmt: skip
        n, draft_s = floor(folder, draft=True)
        _, full_s = floor(folder, draft=False)
        print(f"floor, draft decode, 1 process : {n / draft_s:8.0f} thumbnails/s")
        print(f"floor, full decode, 1 process  : {n / full_s:8.0f} thumbnails/s")
        runs = [("report, thumbnails inline", {"workers": 0}),
                (f"report, pool of {args.workers or os.cpu_count()}", {"workers": args.workers}),
                ("report, no thumbnails", {"thumb_size": 0})]  # fmt: skip
        for label, options in runs:
            r = run_report(db, dest, **options)
            rate = r["drafts"] / r["elapsed_s"]
            ratio = f", {rate * draft_s / n:.2f} x floor" if r["thumbnails"] else ""
            print(f"{label:31}: {rate:8.0f} drafts/s, {r['pages'] / r['elapsed_s']:6.1f} pages/s"
                  f"{ratio}; {r['bytes'] / max(r['drafts'], 1) / 1024:.1f} KiB/draft, "
                  f"peak {r['peak_mib']:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    else:
        main()
