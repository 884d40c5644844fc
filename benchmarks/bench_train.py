"""Benchmark: `labeler demo` end to end, its drafts' quality and p_accept's triage.

One run of the demo's own code (scenes, training with the feature cache, calibration on the
validation drafts, scan, caption, export) on this machine, reporting side by side:
  time      the whole demo and each step. Goal: <= 300 s on the 2-core CPU.
  cache     the first epoch (backbone features computed for every image, then the decoder)
            against a later epoch (the decoder alone on cached features), and a second
            feature pass over the same images, which computes nothing. Goal: >= 10x.
  quality   the held-out scenes (another seed): the share of easy scenes whose best draft
            names every object's colour and shape (goal >= 80%), corpus BLEU-4 against the five
            references (goal >= 0.5), distinct drafts (goal >= 0.8 of the images).
  triage    the AUROC of p_accept for "every object right" over all held-out scenes, hard ones
            included (goal >= 0.9), its expected calibration error (goal <= 0.05), and beside
            them the AUROC of each raw signal (confidence, log_likelihood, ...).

    python benchmarks/bench_train.py                 # the demo's settings
    python benchmarks/bench_train.py --quick         # the demo's --quick settings: a smoke run
    python benchmarks/bench_train.py --train-scenes 20000 --epochs 12
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from labeler.model.checkpoint import load_checkpoint  # noqa: E402
from labeler.training.demo import DemoSettings, run_demo  # noqa: E402
from labeler.training.features import compute_features  # noqa: E402
from labeler.training.readers import read_captions  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:  # type: ignore[no-untyped-def]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-scenes", type=int, default=None, help="default: the demo's")
    p.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--quick", action="store_true", help="the demo's --quick settings")
    return p.parse_args(argv)


def settings_for(args: argparse.Namespace) -> DemoSettings:
    demo = DemoSettings.quick() if args.quick else DemoSettings()
    if args.train_scenes:
        demo = dataclasses.replace(demo, train_scenes=args.train_scenes)
    if args.epochs:
        demo = dataclasses.replace(demo, train=dataclasses.replace(demo.train, epochs=args.epochs))
    return demo


def cache_figures(result) -> dict:  # type: ignore[no-untyped-def]
    """First epoch (features + decoder) against the later ones, and a second feature pass."""
    train = result.train
    epochs = [h.seconds for h in train.history]
    features = train.timings.get("features_s", 0.0)
    later = statistics.median(epochs[1:]) if len(epochs) > 1 else float("nan")
    model = load_checkpoint(result.files["model"]).model
    paths = [item.image_path for item in read_captions(result.files["scenes"]).items]
    t0 = time.perf_counter()
    again = compute_features(model, paths, cache_dir=result.out_dir / "features-cache")
    return {
        "features_s": features, "first_s": features + epochs[0], "cached_s": later,
        "ratio": (features + epochs[0]) / later, "again_s": time.perf_counter() - t0,
        "again_computed": again.computed,
    }  # fmt: skip


def num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(demo: DemoSettings, result, cache: dict) -> None:  # type: ignore[no-untyped-def]
    s, q, t = demo.train, result.quality, result.train
    print(f"settings  {s.backbone} ({s.pretrained or 'random'} weights) at {s.image_size} px, "
          f"taps {list(s.feature_taps)}, embed/hidden {s.embed_size}/{s.hidden_size}, "
          f"{demo.train_scenes} training scenes, epochs <= {s.epochs}")  # fmt: skip
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"time      {result.elapsed_s:.0f} s (goal <= 300 s): {steps}; {len(t.history)} epochs, "
          f"best {t.best_epoch}, {t.stopped}")  # fmt: skip
    print(f"cache     first epoch {cache['first_s']:.1f} s (features {cache['features_s']:.1f} s), "
          f"cached epoch {cache['cached_s']:.2f} s: {cache['ratio']:.1f}x (goal >= 10x); a second "
          f"pass {cache['again_s']:.1f} s, {cache['again_computed']} computed")  # fmt: skip
    easy = q.easy_right / q.easy if q.easy else 0.0
    print(f"quality   {q.captioned} held-out scenes: every object right in {easy:.1%} of {q.easy} "
          f"easy scenes (goal >= 80%; {q.objects_right / max(1, q.captioned):.1%} of all), "
          f"BLEU-4 {num(q.bleu_4)} (goal >= 0.5), distinct drafts "
          f"{q.distinct / max(1, q.captioned):.2f} (goal >= 0.8; the scenes themselves: "
          f"{q.contents / max(1, q.captioned):.2f})")  # fmt: skip
    print(f"triage    p_accept AUROC {num(q.auroc)} (goal >= 0.9), ECE {num(q.ece)} "
          f"(goal <= 0.05)")  # fmt: skip
    for name, value in q.signal_auroc.items():
        print(f"          raw {name:<16} AUROC {num(value)}")
    if t.calibration is not None:
        v = t.calibration.summary()
        print(f"          validation split: {v['right']}/{v['drafts']} right, fitted AUROC "
              f"{num(v['auroc'])}, ECE {num(v['ece'])} (out of fold)")  # fmt: skip


def main(argv=None) -> None:  # type: ignore[no-untyped-def]
    args = parse_args(argv)
    demo = settings_for(args)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = args.workdir or Path(tmp) / "demo"
        result = run_demo(work, settings=demo, force=True)
        report(demo, result, cache_figures(result))


if __name__ == "__main__":
    main()
