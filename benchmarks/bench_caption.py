"""The caption pipeline against the bare model and against the reference implementations' way.

Measured side by side in one run, per backbone, on generated 1600x1200 JPEGs, random weights
(nothing downloaded), vocabulary 10,000, hidden 512, beam 3, batch 32, this machine's CPU:
  (a) bare model: `captioner.caption` on already-decoded, preprocessed tensors (the ceiling),
      run both ways the cores can be used and the faster kept: one process on every thread,
      and one process per core on one thread each, splitting the batches
      (labeler/caption/engines.py says why the second is faster on a CPU)
  (b) `labeler caption` end to end: store look-ups, leases, decoding with JPEG draft mode, the
      model, the writes (the scan is done before, and the start-up of the model processes,
      which load the model as (a) does before its clock, is the run's own `start_s`, left out),
      with the model processes a large run gets (`--procs`, which a run this small would not
      choose for itself: it would not earn back their start-up)
  (c) the reference way: one image at a time, full JPEG decode, per-image beam search
Each is run `--repeat` times, interleaved, and the best of each is compared: on a shared virtual
machine the same run of (a) varies by 10-25% from one minute to the next, and the best run is
the one least disturbed by the neighbours. Every run's figure is printed too.
Goals: (b)/(a) >= 0.85 and (b)/(c) >= 3. On a CPU the decoding shares the model's
cores, so the script also prints the cap that alone puts on (b)/(a): model / (model + decode),
in core-time per image, both measured in the same run. Then peak resident memory of (b) on N and
10N images (in fresh processes, with a small model so the run stays short): goal <= 1.2x.

    python benchmarks/bench_caption.py                       # 256 images, resnet50 and mobilenet
    python benchmarks/bench_caption.py --images 32 --repeat 1 --backbones mobilenet_v3_large

`--ray` (needs `pip install 'labeler[ray]'`, and Ray Data for its (d)) compares instead, side by
side on the same images and checkpoint (mobilenet by default), each without its start-up:
  (b) `labeler caption` with the local engine, as above
  (r) `labeler caption --engine ray` on a local Ray of this machine's cores (one actor per core)
  (d) what the issue first asked for, Ray Data's `map_batches` over an actor pool, fed the way
      the job claims its work, one dataset per window of `--window` images (the pool and its
      models start again for each), and as one dataset over every image (the pool starts once)
Goal: r/b >= 0.85. Then the Ray driver's peak resident memory on 1,000 and 10,000 images (a
small model; the driver only: the actors are Ray's processes): goal flat (<= 1.2x).

    python benchmarks/bench_caption.py --ray                 # 256 images, 1,000 and 10,000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import imagefactory  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from labeler.caption.engines import auto_procs  # noqa: E402
from labeler.caption.loader import decode_first  # noqa: E402
from labeler.files.scan import scan  # noqa: E402
from labeler.model.captioner import ShowTellCaptioner  # noqa: E402
from labeler.model.checkpoint import save_checkpoint  # noqa: E402
from labeler.model.drafts import DecodeSettings  # noqa: E402
from labeler.model.show_tell import ModelConfig, ShowAndTell  # noqa: E402
from labeler.model.vocab import Vocabulary  # noqa: E402
from labeler.store import open_store  # noqa: E402

SETTINGS = DecodeSettings(beam_size=3, max_len=20)


def make_checkpoint(path: Path, backbone: str, vocab_size: int, hidden: int, crop: int | None):
    torch.manual_seed(0)
    words = [f"w{i}" for i in range(vocab_size - 4)]
    vocab = Vocabulary.build([" ".join(words)], min_count=1)
    config = ModelConfig(backbone=backbone, embed_size=hidden, hidden_size=hidden,
                         vocab_size=len(vocab), dropout=0.0)  # fmt: skip
    if crop is not None:
        from dataclasses import replace

        smaller = replace(config.preprocessing, resize=crop + crop // 7, crop=crop)
        config = replace(config, preprocessing=smaller)
    save_checkpoint(path, ShowAndTell(config).eval(), vocab, training={"note": "benchmark"})
    return path


def decoded_pixels(captioner, paths) -> list:
    """Decode and preprocess, untimed, exactly as the pipeline does (so both decode the same
    pixels and the beam search does the same work)."""
    prep = captioner.preprocessing
    return [decode_first([os.fsencode(p)], prep.to_array, prep.resize, 10**9).pixels for p in paths]


def bare_model(captioner, pixels, batch: int) -> float:
    """(a), one process on every thread: the model alone on decoded pixels."""
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        captioner.caption(torch.from_numpy(np.stack(pixels[i : i + batch])), SETTINGS)
    return len(pixels) / (time.perf_counter() - start)


def _bare_share(model: str, pixels, batch: int, barrier, results) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    captioner = ShowTellCaptioner.from_checkpoint(model, device="cpu")
    barrier.wait()
    start = time.perf_counter()
    bare_model(captioner, pixels, batch)
    results.put(time.perf_counter() - start)


def bare_model_per_core(model: Path, pixels, batch: int, procs: int) -> float:
    """(a), one process per core on one thread each, the batches dealt out between them, all
    released together once each has loaded the model; timed until the last one finishes."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(procs), context.Queue()
    batches = [pixels[i : i + batch] for i in range(0, len(pixels), batch)]
    shares = [[p for b in batches[k::procs] for p in b] for k in range(procs)]
    workers = [
        context.Process(target=_bare_share, args=(str(model), share, batch, barrier, results))
        for share in shares
    ]
    for w in workers:
        w.start()
    longest = max(results.get(timeout=3600) for _ in workers)
    for w in workers:
        w.join()
    return len(pixels) / longest


def end_to_end(
    model: Path,
    folder: Path,
    db: Path,
    batch: int,
    workers: int | None,
    procs: int | None,
    engine: str = "local",
) -> float:
    """(b): `python -m labeler caption` in its own process, on a store scanned beforehand, timed
    by the run's own record (caption_runs.timings.total_s: from the job's start, loader processes
    started and torch's import and the model's load excluded, as (a) excludes them too).

    A separate process, not a call from here: a loader process re-imports the parent's main
    module, and this script's imports torch, which `labeler` itself never makes a worker do."""
    store = open_store(db)
    scan(store, [folder])
    store.engine.dispose()
    command = [sys.executable, "-m", "labeler", "caption", "--db", str(db), "--model", str(model),
               "--beam", str(SETTINGS.beam_size), "--max-len", str(SETTINGS.max_len),
               "--batch-size", str(batch), "--engine", engine]  # fmt: skip
    if procs is not None:
        command += ["--procs", str(procs)]
    if workers is not None:
        command += ["--workers", str(workers)]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    with sqlite3.connect(db) as conn:
        counts, timings = conn.execute(
            "SELECT counts, timings FROM caption_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
    images = json.loads(counts)["images"]
    assert images == len(list(folder.glob("*.jpg"))), counts
    timings = json.loads(timings)
    return images / (timings["total_s"] - timings.get("start_s", 0.0))


def reference_way(captioner, paths) -> float:
    """(c): one image at a time, full decode, beam search per image."""
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            pixels = captioner.preprocess(im.convert("RGB"))
        captioner.caption(pixels.unsqueeze(0), SETTINGS)
    return len(paths) / (time.perf_counter() - start)


def peak_rss_run(folder: Path, model: Path, db: Path) -> int:
    """Peak resident memory (KiB) of a fresh process scanning and captioning `folder` the way a
    large run does (model processes whatever the size), plus the peaks of its model processes
    (each reports its own; their sum is an upper bound)."""
    code = (
        "import resource, sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}]\n"
        "from labeler.caption.job import caption_images\n"
        "from labeler.caption.engines import auto_procs\n"
        "from labeler.model.captioner import ShowTellCaptioner\n"
        "from labeler.model.drafts import DecodeSettings\n"
        "from labeler.files.scan import scan\n"
        "from labeler.store import open_store\n"
        "if __name__ == '__main__':\n"
        f"    store = open_store({str(db)!r})\n"
        f"    scan(store, [{str(folder)!r}])\n"
        f"    c = ShowTellCaptioner.from_checkpoint({str(model)!r}, device='cpu')\n"
        "    done = caption_images(store, c, settings=DecodeSettings(beam_size=3, max_len=12),\n"
        "                          batch_size=16, workers=1, procs=auto_procs(c))\n"
        "    procs = done.timings.get('procs_peak_rss_mib', [])\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + 1024 * sum(procs))\n"
    )
    script = db.with_suffix(".py")
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def memory(tmp: Path, images: int) -> None:
    model = make_checkpoint(tmp / "small.pt", "resnet18", 2000, 128, crop=64)
    small, large = tmp / "mem-small", tmp / "mem-large"
    imagefactory.write_many(small, images, size=(640, 480))
    imagefactory.write_many(large, images * 10, size=(640, 480))
    a = peak_rss_run(small, model, tmp / "mem-small.db")
    b = peak_rss_run(large, model, tmp / "mem-large.db")
    print(f"peak RSS, {images} images: {a / 1024:.0f} MiB; {images * 10}: {b / 1024:.0f} MiB; "
          f"ratio {b / a:.2f} (goal <= 1.2)")  # fmt: skip


class _DataActor:
    """(d): a Ray Data actor holding one model, captioning a batch of paths (engines.py)."""

    def __init__(self, spec) -> None:  # type: ignore[no-untyped-def]
        from labeler.caption import engines

        self.engines, self.spec = engines, spec
        engines.caption_batch(spec, [], None)  # the model, loaded once per actor

    def __call__(self, batch):  # type: ignore[no-untyped-def]
        outcome = self.engines.caption_batch(self.spec, [[p] for p in batch["path"]], SETTINGS)
        return {"text": [d.best.text if d else "" for d in outcome.drafts]}


def ray_data(model: Path, paths: list[Path], batch: int, window: int | None) -> float:
    """(d): images/s of Ray Data over an actor pool of one actor per core, one dataset per
    `window` images (None: one dataset for all), the pools' start-up included: that is the
    cost a window pays."""
    import ray
    from ray.data import ActorPoolStrategy

    from labeler.caption.engines import ModelSpec
    from labeler.model.captioner import ShowTellFile

    cores = os.cpu_count() or 2
    info = ShowTellFile.read(model, device="cpu")
    spec = ModelSpec(str(model), info.identity, 1, False, 10**9)
    rows = [{"path": os.fsencode(p)} for p in paths]
    window = window or len(rows)
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        started = time.perf_counter()
        done = 0
        for i in range(0, len(rows), window):
            ds = ray.data.from_items(rows[i : i + window]).map_batches(
                _DataActor, fn_constructor_args=(spec,), batch_size=batch, num_cpus=1,
                compute=ActorPoolStrategy(size=cores),
            )  # fmt: skip
            done += sum(len(b["text"]) for b in ds.iter_batches(batch_size=None))
        return done / (time.perf_counter() - started)
    finally:
        ray.shutdown()


def driver_peak_rss(folder: Path, model: Path, db: Path) -> int:
    """Peak resident memory (KiB) of a fresh driver scanning and captioning `folder` with
    --engine ray (the actors are other processes, Ray's)."""
    code = (
        "import resource, sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}]\n"
        "from labeler.caption.job import caption_images\n"
        "from labeler.caption.ray_engine import RayOptions\n"
        "from labeler.model.captioner import ShowTellFile\n"
        "from labeler.model.drafts import DecodeSettings\n"
        "from labeler.files.scan import scan\n"
        "from labeler.store import open_store\n"
        "if __name__ == '__main__':\n"
        f"    store = open_store({str(db)!r})\n"
        f"    scan(store, [{str(folder)!r}])\n"
        f"    c = ShowTellFile.read({str(model)!r}, device='cpu')\n"
        "    done = caption_images(store, c, settings=DecodeSettings(beam_size=3, max_len=12),\n"
        "                          batch_size=16, ray=RayOptions())\n"
        "    assert not done.failed, done.failed\n"
        "    print(done.images, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    script = db.with_suffix(".py")
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1].split()[1])


class CoreSeconds(threading.Thread):
    """CPU time (user + system, in core-seconds) of this machine's processes while a run goes,
    by kind: Ray's own (raylet, GCS, agents, monitors, idle workers), the model's (Ray actors,
    or the local engine's model processes) and the driver (the `labeler caption` process).
    Sampled every 0.2 s, each process's last reading kept (a process's CPU time only grows)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.last: dict[int, tuple[str, float]] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
                kind = _kind(process.info["name"] or "", " ".join(process.info["cmdline"] or []))
                if kind is not None and process.info["cpu_times"] is not None:
                    times = process.info["cpu_times"]
                    self.last[process.pid] = (kind, times.user + times.system)

    def totals(self) -> dict[str, float]:
        self.stopped.set()
        self.join()
        out: dict[str, float] = {}
        for kind, seconds in self.last.values():
            out[kind] = out.get(kind, 0.0) + seconds
        return out


def _kind(name: str, cmdline: str) -> str | None:
    if "ray::_Actor" in name or "ray::_Actor" in cmdline or "multiprocessing.forkserver" in cmdline:
        return "model"
    if "-m labeler caption" in cmdline:
        return "driver"
    ray_parts = ("raylet", "gcs_server", "ray/dashboard", "log_monitor", "autoscaler",
                 "runtime_env", "ray::IDLE", "default_worker.py")  # fmt: skip
    if name in ("raylet", "gcs_server") or any(part in cmdline for part in ray_parts):
        return "ray"
    return None


def compare_ray(args, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    """(b) against (r) and (d) on the same images, interleaved; then the driver's memory."""
    folder = tmp / "photos"
    paths = imagefactory.write_many(folder, args.images, size=(1600, 1200))
    print(f"{args.images} JPEGs of 1600x1200, beam 3, batch {args.batch}, {os.cpu_count()} "
          f"cores; (b) local engine as a large run, (r) --engine ray on a local Ray, (d) Ray "
          f"Data, one dataset per {args.window} images and one for all")  # fmt: skip
    for backbone in args.backbones:
        model = make_checkpoint(tmp / f"{backbone}.pt", backbone, args.vocab, args.hidden, None)
        captioner = ShowTellCaptioner.from_checkpoint(model, device="cpu")
        procs = auto_procs(captioner) if args.procs is None else args.procs
        runs: dict[str, list[float]] = {"local": [], "ray": [], "data_windows": [],
                                        "data_one": []}  # fmt: skip
        cpu: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
        for repeat in range(args.repeat):
            db = tmp / f"{backbone}-{repeat}"
            for name, engine, given in (("local", "local", procs), ("ray", "ray", None)):
                sampler = CoreSeconds()
                sampler.start()
                runs[name].append(end_to_end(model, folder, db.with_suffix(f".{name}.db"),
                                             args.batch, None, given, engine=engine))  # fmt: skip
                cpu[name].append(sampler.totals())
            if not args.no_ray_data:
                runs["data_windows"].append(ray_data(model, paths, args.batch, args.window))
                runs["data_one"].append(ray_data(model, paths, args.batch, None))
        b, r = max(runs["local"]), max(runs["ray"])
        line = (f"{backbone:>20}: (b) local {b:6.2f} img/s  (r) --engine ray {r:6.2f} img/s  "
                f"r/b {r / b:.2f} (goal >= 0.85)")  # fmt: skip
        if runs["data_one"]:
            per, one = max(runs["data_windows"]), max(runs["data_one"])
            windows = -(-args.images // args.window)
            restart = (args.images / per - args.images / one) / max(1, windows - 1)
            line += (f"  |  (d) Ray Data per {args.window}: {per:6.2f} img/s, one dataset: "
                     f"{one:6.2f} img/s; each new dataset costs {restart:.1f} s")  # fmt: skip
        print(line)
        # Where the cores went, start-up included, per image: the model (actors, or model
        # processes), the driver, and Ray's own processes. On a machine whose cores the model
        # fills, the core-time spent outside the model is what the Ray run cannot give it.
        spent = {name: {k: min(c.get(k, 0.0) for c in runs_cpu) / args.images
                        for k in ("model", "driver", "ray")}
                 for name, runs_cpu in cpu.items()}  # fmt: skip
        for name, kinds in spent.items():
            print(" " * 22 + f"core-ms per image, {name}: " + ", ".join(
                f"{k} {1000 * v:.0f}" for k, v in kinds.items()))  # fmt: skip
        local_ms, ray_ms = sum(spent["local"].values()), sum(spent["ray"].values())
        print(" " * 22 + f"the Ray run spent {1000 * (ray_ms - local_ms):.0f} core-ms per image "
              f"more: with every core busy in both, r/b can be at most {local_ms / ray_ms:.2f} "
              "(start-up included in both)")  # fmt: skip
        print(" " * 22 + "every run, img/s: " + "  ".join(
            f"({k}) " + " ".join(f"{v:.2f}" for v in vs) for k, vs in runs.items() if vs
        ))  # fmt: skip
    if not args.no_memory:
        model = make_checkpoint(tmp / "small.pt", "resnet18", 2000, 128, crop=64)
        peaks = []
        for n in (1000, 10_000):
            many = tmp / f"mem-{n}"
            imagefactory.write_many(many, n, size=(64, 48))
            peaks.append(driver_peak_rss(many, model, tmp / f"mem-{n}.db"))
        a, b = peaks[0] / 1024, peaks[1] / 1024
        print(f"ray driver peak RSS, 1,000 images: {a:.0f} MiB; 10,000: {b:.0f} MiB; "
              f"ratio {b / a:.2f} (goal <= 1.2)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a), (b), (c); best kept")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="loader processes for (b)")
    parser.add_argument("--procs", type=int, default=None,
                        help="model processes for (b); default: what a large run gets")  # fmt: skip
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "mobilenet_v3_large"])
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--ray", action="store_true",
                        help="the local engine against --engine ray and Ray Data")  # fmt: skip
    parser.add_argument("--window", type=int, default=64,
                        help="--ray: images per Ray Data dataset in (d)")  # fmt: skip
    parser.add_argument("--no-ray-data", action="store_true", help="--ray: leave (d) out")
    args = parser.parse_args()
    if args.ray and args.backbones == parser.get_default("backbones"):
        args.backbones = ["mobilenet_v3_large"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.ray:
            compare_ray(args, tmp)
            return
        folder = tmp / "photos"
        paths = imagefactory.write_many(folder, args.images, size=(1600, 1200))
        print(f"{args.images} JPEGs of 1600x1200, beam 3, batch {args.batch}, "
              f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores; (b) with "
              f"--procs {args.procs if args.procs is not None else 'as a large run'}")  # fmt: skip
        results = {}
        for backbone in args.backbones:
            model = make_checkpoint(tmp / f"{backbone}.pt", backbone, args.vocab, args.hidden, None)
            captioner = ShowTellCaptioner.from_checkpoint(model, device="cpu")
            pixels = decoded_pixels(captioner, paths)
            procs = auto_procs(captioner) if args.procs is None else args.procs
            runs: dict[str, list[float]] = {"bare": [], "bare_per_core": [], "pipeline": [],
                                            "reference": [], "decode_ms": []}  # fmt: skip
            cores = torch.get_num_threads()
            for repeat in range(args.repeat):  # interleaved, so a slow spell hits all four
                runs["bare"].append(bare_model(captioner, pixels, args.batch))
                if cores > 1:
                    runs["bare_per_core"].append(
                        bare_model_per_core(model, pixels, args.batch, cores)
                    )
                db = tmp / f"{backbone}-{repeat}.db"
                runs["pipeline"].append(
                    end_to_end(model, folder, db, args.batch, args.workers, procs)
                )
                runs["reference"].append(
                    reference_way(captioner, paths[: max(8, args.images // 4)])
                )
                started, sample = time.perf_counter(), paths[: max(8, args.images // 4)]
                decoded_pixels(captioner, sample)
                runs["decode_ms"].append(1000 * (time.perf_counter() - started) / len(sample))
            a = max(runs["bare"] + runs["bare_per_core"])
            b, c = max(runs["pipeline"]), max(runs["reference"])
            results[backbone] = runs
            print(f"{backbone:>20}: (a) bare {a:6.2f} img/s  (b) labeler caption {b:6.2f} img/s  "
                  f"(c) reference {c:6.2f} img/s  |  b/a {b / a:.2f} (goal >= 0.85)  "
                  f"b/c {b / c:.2f} (goal >= 3)")  # fmt: skip
            # On a CPU the decoding takes the model's own cores: with perfect sharing, b/a can be
            # at most model / (model + decode), in core-time per image.
            decode_ms, model_ms = min(runs["decode_ms"]), 1000 * cores / a
            print(" " * 22 + f"per image: model {model_ms:.1f} ms of a core, decoding "
                  f"{decode_ms:.1f} ms: decoding alone caps b/a at "
                  f"{model_ms / (model_ms + decode_ms):.2f} on these cores")  # fmt: skip
            print(" " * 22 + "every run, img/s: " + "  ".join(
                f"({k}) " + " ".join(f"{v:.2f}" for v in runs[n])
                for k, n in (("a, 1 process", "bare"), (f"a, {cores}x1 thread", "bare_per_core"),
                             ("b", "pipeline"), ("c", "reference"))
            ))  # fmt: skip
        print(json.dumps(results))
        if not args.no_memory:
            memory(tmp, max(20, args.images // 2))


if __name__ == "__main__":
    main()
