"""`labeler serve`'s /predict against `labeler caption` on the same images, side by side in one run.

Both run as the user runs them, in their own processes, on the same generated 1600x1200 JPEGs,
the same random-weight checkpoint (mobilenet_v3_large, vocabulary 10,000, hidden 512), beam 3,
max length 20, each with its default batch size and model processes, each on a fresh store:
  (b) `labeler caption`: images per second of the run's own record (start of the model
      processes excluded, as a server's start is excluded below);
  (s) one POST /predict of all the tasks (local-files URLs under --document-root) to a running
      `labeler serve`, timed by the client: images per second.
Both stores are scanned beforehand, as (b) needs; /predict on images the store has never seen
(registered, hashed, by the request itself) is measured too. Goal: s/b >= 0.8. Then the
latency of one task with the model warm, p50 and p95 over `--latency` requests: a new image
(the model runs) and an image already drafted (the store answers). Runs are interleaved
`--repeat` times and the best of each kept.

    python benchmarks/bench_serve.py                 # 100 images, 2 repeats, 20 single tasks
    python benchmarks/bench_serve.py --images 20 --repeat 1 --latency 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

import imagefactory  # noqa: E402
from bench_caption import SETTINGS, end_to_end, make_checkpoint  # noqa: E402

from labeler.caption.engines import auto_procs  # noqa: E402
from labeler.files.scan import scan  # noqa: E402
from labeler.formats.labelstudio import LABEL_CONFIG, LOCAL_FILES  # noqa: E402
from labeler.model.captioner import ShowTellFile  # noqa: E402
from labeler.store import open_store  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`labeler serve` in its own process, waited for until /health answers."""

    def __init__(self, model: Path, db: Path, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "labeler",
            "serve",
            "--model",
            str(model),
            "--db",
            str(db),
            "--document-root",
            str(root),
            "--port",
            str(self.port),
            "--beam",
            str(SETTINGS.beam_size),
            "--max-len",
            str(SETTINGS.max_len),
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode()[-2000:])
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("labeler serve did not answer /health within 300 s")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(60)

    def predict(self, rels: list[str]) -> tuple[float, list]:
        tasks = [{"id": i, "data": {"image": LOCAL_FILES + rel}} for i, rel in enumerate(rels)]
        body = json.dumps({"tasks": tasks, "label_config": LABEL_CONFIG, "project": "1.1"})
        request = urllib.request.Request(
            f"{self.url}/predict", body.encode(), {"Content-Type": "application/json"}
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as answer:
            results = json.loads(answer.read())["results"]
        return time.perf_counter() - started, results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--latency", type=int, default=20, help="single-task requests of each kind")
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "root"
        folder = root / "photos"
        paths = imagefactory.write_many(folder, args.images, size=(1600, 1200))
        rels = [p.relative_to(root).as_posix() for p in paths]
        extra = root / "single"
        singles = imagefactory.write_many(
            extra, args.latency * args.repeat, size=(1600, 1200), start=args.images
        )
        model = make_checkpoint(tmp / "model.pt", args.backbone, 10_000, 512, None)
        file = ShowTellFile.read(model, device="cpu")
        print(
            f"{args.images} JPEGs of 1600x1200, {args.backbone}, beam 3, max length 20, "
            f"{os.cpu_count()} cores; each command with its default batch and processes"
        )
        caption, serve, fresh, new, known = [], [], [], [], []
        for repeat in range(args.repeat):
            db = tmp / f"caption-{repeat}.db"
            caption.append(end_to_end(model, folder, db, 32, None, auto_procs(file)))
            unknown = tmp / f"serve-new-{repeat}.db"
            with Server(model, unknown, root) as server:
                seconds, results = server.predict(rels)
                assert sum(1 for r in results if r) == len(rels), results[:3]
                fresh.append(len(rels) / seconds)
            scanned = tmp / f"serve-{repeat}.db"
            store = open_store(scanned)
            scan(store, [folder, extra])
            store.engine.dispose()
            with Server(model, scanned, root) as server:
                seconds, results = server.predict(rels)
                assert sum(1 for r in results if r) == len(rels), results[:3]
                serve.append(len(rels) / seconds)
                mine = singles[repeat * args.latency : (repeat + 1) * args.latency]
                for path in mine:
                    new.append(server.predict([path.relative_to(root).as_posix()])[0])
                for rel in rels[: args.latency]:
                    known.append(server.predict([rel])[0])
        b, s, f = max(caption), max(serve), max(fresh)
        print(
            f"(b) labeler caption {b:6.2f} img/s   (s) POST /predict of {args.images} tasks "
            f"{s:6.2f} img/s   s/b {s / b:.2f} (goal >= 0.8)"
        )
        print(
            f"    images the store has never seen (registered, hashed, by /predict itself): "
            f"{f:6.2f} img/s, {f / b:.2f} of (b)"
        )
        ms = {
            name: (1000 * statistics.median(v), 1000 * percentile(v, 0.95))
            for name, v in (("new", new), ("known", known))
        }
        print(
            "one task, model warm: new image p50 {:.0f} ms, p95 {:.0f} ms; already drafted "
            "p50 {:.0f} ms, p95 {:.0f} ms".format(*ms["new"], *ms["known"])
        )
        print(
            "every run, img/s: (b) "
            + " ".join(f"{v:.2f}" for v in caption)
            + "  (s) "
            + " ".join(f"{v:.2f}" for v in serve)
            + "  (s, unseen) "
            + " ".join(f"{v:.2f}" for v in fresh)
        )


if __name__ == "__main__":
    main()
