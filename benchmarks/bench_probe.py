"""Micro-benchmark: `labeler.files.probe.probe` against plain reading and hashing of the same
files.

Generates small JPEG and PNG files (distinct content, several sizes) in a temporary folder,
warms the page cache, then times in alternating rounds and keeps each method's best round:
  hash     open + read + sha256 per file, one process (the scan benchmark's yardstick)
  probe    probe() per file, one process
  decode   probe(decode=True) per file, one process (decodes every first frame; --decode)
  probe xN probe() spread over N worker processes, as the scan runs it
  hash xN  the plain hashing spread the same way: a control for what N processes can gain here
The one-process rows count files per second of this process's CPU time (user + system), which
other work on a shared machine disturbs far less than wall time; the xN rows can only use wall
time, and where `hash xN` is not near N x `hash` the machine's cores are busy elsewhere. Ratios
are against `hash`; absolute rates are noise.

    python benchmarks/bench_probe.py --n 3000 --sizes 64,128,256 --workers 2
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from a checkout, installed or not

import imagefactory  # noqa: E402

from labeler.files.probe import probe  # noqa: E402


def hash_plain(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            hashlib.sha256(f.read()).hexdigest()


def probe_all(paths: list[Path], decode: bool = False) -> None:
    for path in paths:
        result = probe(path, decode=decode)
        if not result.ok:
            raise SystemExit(f"benchmark file failed to probe: {path}: {result.reason}")


def probe_batch(paths: list[str]) -> int:
    return sum(probe(path).ok for path in paths)


def hash_batch(paths: list[str]) -> int:
    hash_plain(paths)
    return len(paths)


def make_files(folder: Path, n: int, sizes: list[int], formats: list[str]) -> list[Path]:
    paths: list[Path] = []
    per_kind = max(1, n // (len(formats) * len(sizes)))
    for fmt in formats:
        for side in sizes:
            # Distinct starts keep every file's content distinct across the groups.
            start = len(paths)
            paths += imagefactory.write_many(
                folder / f"{fmt}{side}", per_kind, (side, side), fmt, start=start
            )
    return paths


def timed(run, paths: list[Path], clock) -> float:
    began = clock()
    run(paths)
    return len(paths) / (clock() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="number of files")
    parser.add_argument("--sizes", default="64,128,256", help="square image sides, comma-separated")
    parser.add_argument("--formats", default="JPEG,PNG", help="comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--decode", action="store_true", help="also time probe(decode=True)")
    args = parser.parse_args()
    sizes = [int(side) for side in args.sizes.split(",")]

    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.workers) as pool:
        paths = make_files(Path(tmp), args.n, sizes, args.formats.upper().split(","))
        total = sum(path.stat().st_size for path in paths)
        print(f"{len(paths)} files, {total / len(paths) / 1024:.1f} KiB mean, sides {sizes}")
        hash_plain(paths)  # warm the page cache
        names = [str(path) for path in paths]
        batches = [names[i : i + 64] for i in range(0, len(names), 64)]
        list(pool.map(probe_batch, batches[: args.workers]))  # start the workers

        def spread(batch_function):
            def run(all_paths: list[Path]) -> None:
                assert sum(pool.map(batch_function, batches)) == len(all_paths)

            return run

        cpu, wall = time.process_time, time.perf_counter
        methods = {
            "hash": (hash_plain, cpu),
            "probe": (probe_all, cpu),
            "decode": (lambda p: probe_all(p, decode=True), cpu),
            f"probe x{args.workers}": (spread(probe_batch), wall),
            f"hash x{args.workers}": (spread(hash_batch), wall),
        }
        if not args.decode:
            del methods["decode"]
        best = dict.fromkeys(methods, 0.0)
        for _ in range(args.rounds):
            for name, (run, clock) in methods.items():
                best[name] = max(best[name], timed(run, paths, clock))

    for name, rate in best.items():
        unit = "CPU" if methods[name][1] is time.process_time else "wall"
        print(f"{name:>10}: {rate:9.0f} files/{unit}-s   {rate / best['hash']:.2f} x hash")


if __name__ == "__main__":
    main()
