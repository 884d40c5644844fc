"""Export and import throughput of the file formats, and whether memory stays flat.

    python benchmarks/bench_formats.py [--rows 1000000] [--small 100000] [--reviewed 100000]

Each measurement runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own. For CSV and JSONL it writes `--small` and then `--rows` synthetic drafts and reports wall
and CPU seconds (on a shared machine the CPU time is the fairer figure), rows/s, and the peak
memory growth over the process's footprint before the first row; flat memory means the two
peaks match. Generating the rows alone is timed too: the writer's own cost is the difference
(the store, not this generator, will be the real source). A second pass under tracemalloc
gives the Python-level allocation peak at both sizes. Finally a reviewed CSV of `--reviewed`
rows (a third accepted, a third edited, a third rejected) is parsed with `read_reviews`.

Absolute numbers on a shared machine are noise; compare the lines of one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeler.formats.reviews import read_reviews  # noqa: E402
from labeler.formats.tabular import write_csv, write_jsonl  # noqa: E402
from labeler.records import Alternative, ExportRow  # noqa: E402

WORDS = [
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "red",
    "blue",
    "on",
    "the",
    "with",
    "riding",
    "sitting",
    "near",
    "field",
    "street",
]
WRITERS = {"csv": write_csv, "jsonl": write_jsonl}
POOL = 997  # distinct captions; the ids and paths of every row are its own


def _caption(i: int) -> tuple[str, list[float], Alternative]:
    words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(6 + i % 7)]
    # full-precision values, as a model's float32 log-softmax converted to float gives
    logprobs = [-0.05 - ((i + k) % 13) * 0.1 - 1e-7 * i for k in range(len(words) + 1)]
    total = sum(logprobs)
    alternative = Alternative(
        1,
        " ".join(reversed(words)),
        total - 1.0,
        len(logprobs),
        math.exp((total - 1.0) / len(logprobs)),
        1 / (1 + math.exp(2.0 - total / 4)),  # p_accept: a calibrated-looking value
    )
    return " ".join(words), logprobs, alternative


def synthetic_rows(count: int):
    """A fresh ExportRow per row, as the store will build them, shaped like real drafts."""
    captions = [_caption(i) for i in range(POOL)]
    for i in range(count):
        text, logprobs, alternative = captions[i % POOL]
        total = alternative.log_likelihood + 1.0
        folder = f"shard_{i // 10000:03d}"
        yield ExportRow(
            image_id=i,
            dataset="bench",
            path=f"{folder}/img_{i:08d}.jpg",
            abs_path=f"/data/bench/{folder}/img_{i:08d}.jpg",
            content_hash=f"{i * 2654435761 % (1 << 64):016x}" * 4,
            width=640,
            height=480,
            model_name="show-tell",
            model_hash="ab12cd34ef56",
            settings_key="beam=3,maxlen=20",
            caption_id=i,
            text=text,
            log_likelihood=total,
            num_tokens=len(logprobs),
            confidence=math.exp(total / len(logprobs)),
            p_accept=1 / (1 + math.exp(1.0 - total / 4)),
            token_logprobs=logprobs,
            margin=0.3,
            finished=True,
            repeated_ngram=False,
            has_unknown=i % 97 == 0,
            alternatives=(alternative,),
        )


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def child(kind: str, count: int, out: Path, trace: bool) -> dict:
    """One measurement, run inside its own process."""
    if trace:
        tracemalloc.start()
    before = peak_kib()
    start, cpu_start = time.perf_counter(), time.process_time()
    if kind == "generate":
        for _ in synthetic_rows(count):
            pass
    elif kind == "parse":
        records = read_reviews(out)
        count = len(records)
    else:
        WRITERS[kind](synthetic_rows(count), out, force=True, n_best=2)
    seconds = time.perf_counter() - start
    result = {
        "kind": kind,
        "rows": count,
        "seconds": seconds,
        "rows_per_s": count / seconds,
        "cpu_seconds": time.process_time() - cpu_start,
        "rss_growth_mib": (peak_kib() - before) / 1024,
    }
    if trace:
        result["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    return result


def run_child(kind: str, count: int, out: Path, trace: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(count), str(out)]
    if trace:
        command.append("--trace")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def reviewed_csv(path: Path, count: int) -> None:
    """Our CSV export of `count` rows, then filled in as a reviewer would."""
    write_csv(synthetic_rows(count), path, force=True)
    with path.open(encoding="utf-8-sig", newline="") as source:
        rows = list(csv.reader(source))
    header = rows[0]
    draft, reviewed = header.index("draft_caption"), header.index("reviewed_caption")
    outcome = header.index("outcome")
    for number, row in enumerate(rows[1:]):
        if number % 3 == 0:
            row[reviewed] = row[draft]
        elif number % 3 == 1:
            row[reviewed] = row[draft] + ", in the rain"
        else:
            row[outcome] = "rejected"
    with path.open("w", encoding="utf-8-sig", newline="") as target:
        csv.writer(target).writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--reviewed", type=int, default=100_000)
    parser.add_argument("--no-trace", action="store_true", help="skip the tracemalloc pass")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_formats_") as folder:
        out = Path(folder)
        print(
            f"{'measure':<22}{'rows':>10}{'s':>8}{'cpu s':>8}{'rows/s':>11}{'rss+ MiB':>10}"
            f"{'traced MiB':>12}"
        )
        for count in (args.small, args.rows):
            show(run_child("generate", count, out / "none"), "generate only")
            for kind in WRITERS:
                show(run_child(kind, count, out / f"export.{kind}"), f"write {kind}")
                (out / f"export.{kind}").unlink()
        if not args.no_trace:
            for count in (args.small, args.rows):
                for kind in WRITERS:
                    show(run_child(kind, count, out / f"t.{kind}", trace=True), f"{kind} traced")
                    (out / f"t.{kind}").unlink()
        reviewed_csv(out / "reviewed.csv", args.reviewed)
        show(run_child("parse", 0, out / "reviewed.csv"), "read_reviews csv")


def show(result: dict, label: str) -> None:
    traced = result.get("traced_peak_mib")
    traced_text = f"{traced:12.1f}" if traced is not None else f"{'':12}"
    print(
        f"{label:<22}{result['rows']:>10}{result['seconds']:>8.2f}"
        f"{result['cpu_seconds']:>8.2f}{result['rows_per_s']:>11.0f}"
        f"{result['rss_growth_mib']:>10.1f}{traced_text}",
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, count, out = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
        print(json.dumps(child(kind, count, out, trace="--trace" in sys.argv)))
    else:
        main()
