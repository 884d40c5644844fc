"""Scan throughput against reading and hashing the same bytes, measured side by side in one run.

    python benchmarks/bench_scan.py                 # 100,000 small generated images
    python benchmarks/bench_scan.py --files 5000    # a quick look

Goals: first scan at least half the rate of plain read + sha256 in one process;
a re-scan of the unchanged folder at least 20 times faster than the first scan. Also printed:
listing and stat-ing every file and nothing else, the least any re-scan must do (a file changed
in place changes its own mtime, not its folder's), against the rate both goals together ask of
a re-scan.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import imagefactory  # noqa: E402

from labeler.files.scan import scan  # noqa: E402
from labeler.store import open_store  # noqa: E402


def hash_everything(folder: Path) -> int:
    """The baseline: walk, read and sha256 every file in this one process."""
    count = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            digest = hashlib.sha256()
            with open(os.path.join(dirpath, name), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            count += 1
    return count


def stat_everything(folder: Path) -> int:
    """The floor of any re-scan: list every folder and stat every file, nothing else."""
    count, pending = 0, [os.fsencode(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    entry.stat(follow_symlinks=False)
                    count += 1
    return count


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", default="64x48", help="image size, WxH")
    parser.add_argument("--format", default="JPEG", choices=["JPEG", "PNG"])
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        per_folder = 1000  # like real datasets: many folders of a thousand files
        made, gen_s = timed(
            lambda: _generate(folder, args.files, per_folder, (width, height), args.format)
        )
        print(f"generated {made} {args.format} images of {width}x{height} in {gen_s:.1f} s")
        n, hash_s = timed(lambda: hash_everything(folder))
        _, stat_s = timed(lambda: stat_everything(folder))
        store = open_store(Path(tmp) / "bench.db")
        first, first_s = timed(lambda: scan(store, [folder], workers=args.workers))
        again, again_s = timed(lambda: scan(store, [folder], workers=args.workers))
        assert first.new == n and again.unchanged == n, (first, again)
        hash_rate, first_rate, again_rate = n / hash_s, n / first_s, n / again_s
        print(f"read + sha256, one process : {hash_rate:10.0f} files/s")
        print(f"first scan                 : {first_rate:10.0f} files/s")
        print(f"re-scan, nothing changed   : {again_rate:10.0f} files/s")
        print(f"first scan / hashing       : {first_rate / hash_rate:10.2f}  (goal >= 0.5)")
        print(f"re-scan / first scan       : {again_rate / first_rate:10.1f}  (goal >= 20)")
        stat_rate = n / stat_s
        print(f"walk + stat only, one proc.: {stat_rate:10.0f} files/s (the floor of a re-scan)")
        print(f"both goals at once need a re-scan of {10 * hash_rate:.0f} files/s "
              f"(20 x 0.5 x hashing): {10 * hash_rate / stat_rate:.1f} x that floor")  # fmt: skip


def _generate(folder: Path, count: int, per_folder: int, size, fmt) -> int:  # type: ignore[no-untyped-def]
    made = 0
    for start in range(0, count, per_folder):
        sub = folder / f"part{start // per_folder:04d}"
        n = min(per_folder, count - start)
        imagefactory.write_many(sub, n, size=size, fmt=fmt, start=start)
        made += n
    return made


if __name__ == "__main__":
    main()
