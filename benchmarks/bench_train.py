"""Benchmark: the feature cache's speed-up and the training quality of the demo's settings.

One run, on generated scenes (nothing is downloaded), reporting side by side:
  cache     the first epoch (backbone features computed for every image, then the decoder)
            against a later epoch (features read from the cache: the decoder alone), and a
            second run's feature step, which computes nothing. Goal: >= 10x.
  training  the demo's training settings on 3,000 scenes (+300 for validation), timed from the
            first image read to the best checkpoint written. Goal: <= 300 s on the 2-core CPU.
  quality   the trained model captions 300 held-out scenes (drawn with another seed, as the demo
            does) with the demo's decoding settings: corpus BLEU-4 against the five references
            (goal >= 0.5), the share of easy scenes whose best draft names every object's colour
            and shape (goal >= 90%), and the AUROC of `confidence` for "the draft names the
            objects right" over all held-out scenes, hard ones included (goal >= 0.8).
Scene drawing is not timed. The cache folder is fresh, so the first epoch really computes.

    python benchmarks/bench_train.py                 # the demo's settings, 3000 + 300 + 300 scenes
    python benchmarks/bench_train.py --quick         # 300 scenes, 3 epochs: a smoke run
    python benchmarks/bench_train.py --fine-tune-encoder --fine-tune-stages 6 --epochs 5
    python benchmarks/bench_train.py --pretrained DEFAULT --image-size 224   # with ImageNet weights
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

from labeler.data.readers import read_captions  # noqa: E402
from labeler.data.scenes import generate_scenes, objects_right  # noqa: E402
from labeler.demo import DemoSettings  # noqa: E402
from labeler.evaluate import evaluate_model  # noqa: E402
from labeler.features import compute_features  # noqa: E402
from labeler.model.checkpoint import load_checkpoint  # noqa: E402
from labeler.stats import auroc  # noqa: E402
from labeler.train import train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    demo = DemoSettings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-scenes", type=int, default=demo.train_scenes)
    p.add_argument("--val-scenes", type=int, default=demo.val_scenes)
    p.add_argument("--holdout", type=int, default=demo.holdout_scenes, help="held-out scenes")
    p.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    p.add_argument("--image-size", type=int, default=None, help="default: the demo's")
    p.add_argument("--fine-tune-encoder", action="store_true")
    p.add_argument("--fine-tune-stages", type=int, default=None)
    p.add_argument("--encoder-lr", type=float, default=None)
    p.add_argument("--pretrained", default=None, help="ImageNet weights name (needs the file)")
    p.add_argument("--threads", type=int, default=None, help="default: the demo's")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--quick", action="store_true", help="300 + 60 + 60 scenes, 3 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.train_scenes, args.val_scenes, args.holdout = 300, 60, 60
        args.epochs = args.epochs or 3
    return args


def settings_for(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    demo = DemoSettings()
    changes = {
        "epochs": args.epochs, "image_size": args.image_size, "pretrained": args.pretrained,
        "fine_tune_stages": args.fine_tune_stages, "threads": args.threads,
        "encoder_lr": args.encoder_lr,
        "fine_tune_encoder": args.fine_tune_encoder or None,
    }  # fmt: skip
    train = dataclasses.replace(demo.train, **{k: v for k, v in changes.items() if v is not None})
    return dataclasses.replace(demo, train=train)


def draw(work: Path, demo: DemoSettings, args: argparse.Namespace) -> tuple[Path, Path]:
    count = args.train_scenes + args.val_scenes
    splits = {"train": args.train_scenes / count, "val": args.val_scenes / count}
    made = generate_scenes(work / "scenes", count=count, seed=demo.seed, size=demo.scene_size,
                           splits=splits)  # fmt: skip
    held = generate_scenes(work / "holdout", count=args.holdout, seed=demo.seed + 1,
                           size=demo.scene_size, splits="test")  # fmt: skip
    return made.json_path, held.json_path


def cache_figures(result, model_path: Path, data, cache: Path, demo) -> dict:  # type: ignore[no-untyped-def]
    """First epoch (features + decoder) against the later epochs, and a second run's features."""
    epochs = [h.seconds for h in result.history]
    features = result.timings.get("features_s", 0.0)
    later = statistics.median(epochs[1:]) if len(epochs) > 1 else float("nan")
    model = load_checkpoint(model_path).model
    t0 = time.perf_counter()
    again = compute_features(model, [i.image_path for i in data.items], cache_dir=cache,
                             workers=demo.train.workers)  # fmt: skip
    return {
        "features_s": features, "first_decoder_s": epochs[0], "first_s": features + epochs[0],
        "cached_s": later, "ratio": (features + epochs[0]) / later,
        "second_run_features_s": time.perf_counter() - t0, "second_run_computed": again.computed,
    }  # fmt: skip


def quality(model_path: Path, holdout: Path, demo) -> dict:  # type: ignore[no-untyped-def]
    data = read_captions(holdout)
    truth = {item.key: item.extra for item in data.items}
    result = evaluate_model(model_path, data, split="test", settings=demo.decode,
                            device=demo.train.device, workers=demo.train.workers,
                            use_java=False)  # fmt: skip
    right = {e.key: objects_right(e.hypothesis, truth[e.key]["objects"]) for e in result.images}
    easy = [key for key in right if not truth[key]["hard"]]
    return {
        "bleu_4": result.scores.bleu_4, "cider": result.scores.cider,
        "easy": len(easy), "easy_right": sum(right[k] for k in easy) / max(1, len(easy)),
        "all_right": sum(right.values()) / max(1, len(right)),
        "auroc": auroc([(e.confidence, right[e.key]) for e in result.images]),
        "distinct_drafts": len({e.hypothesis for e in result.images}),
        "examples": [(e.confidence, right[e.key], e.hypothesis) for e in result.images[:5]],
    }  # fmt: skip


def report(args, demo, result, cache, q) -> None:  # type: ignore[no-untyped-def]
    s = demo.train
    encoder = f"fine-tuning {s.fine_tune_stages} stage(s)" if s.fine_tune_encoder else "frozen"
    print(f"settings: {s.backbone} at {s.image_size or 'default'} px, {encoder}, embed/hidden "
          f"{s.embed_size}/{s.hidden_size}, batch {s.batch_size}, "
          f"epochs <= {s.epochs}, threads {s.threads}")  # fmt: skip
    if cache is not None:
        print(f"cache     first epoch {cache['first_s']:.1f} s (features {cache['features_s']:.1f}"
              f" s + decoder {cache['first_decoder_s']:.1f} s), cached epoch "
              f"{cache['cached_s']:.2f} s: {cache['ratio']:.1f}x (goal >= 10x); a second run's "
              f"features {cache['second_run_features_s']:.2f} s, "
              f"{cache['second_run_computed']} computed")  # fmt: skip
    print(f"training  {args.train_scenes} scenes, {len(result.history)} epochs (best "
          f"{result.best_epoch}, val loss {result.best_val_loss:.2f}, {result.stopped}) in "
          f"{result.elapsed_s:.0f} s (goal <= 300 s)")  # fmt: skip
    score = f"{q['auroc']:.2f}" if q["auroc"] is not None else "undefined (all drafts alike)"
    print(f"quality   {args.holdout} held-out scenes: BLEU-4 {q['bleu_4']:.3f} (goal >= 0.5), "
          f"objects right {q['easy_right']:.1%} of {q['easy']} easy scenes (goal >= 90%; "
          f"{q['all_right']:.1%} of all), AUROC {score} (goal >= 0.8), CIDEr {q['cider']:.2f}, "
          f"{q['distinct_drafts']} distinct drafts")  # fmt: skip
    for confidence, ok, text in q["examples"]:
        print(f"          {confidence:.3f} {'right' if ok else 'wrong'}: {text}")


def main(argv=None) -> None:
    args = parse_args(argv)
    demo = settings_for(args)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        scenes, holdout = draw(work, demo, args)
        print(f"drew {args.train_scenes + args.val_scenes + args.holdout} scenes in "
              f"{time.perf_counter() - t0:.0f} s (not timed below)", flush=True)  # fmt: skip
        data = read_captions(scenes)
        cache_dir = work / "features-cache"
        result = train(data, work / "model.pt", settings=demo.train, force=True,
                       cache_dir=cache_dir)  # fmt: skip
        cache = None
        if not demo.train.fine_tune_encoder:
            cache = cache_figures(result, work / "model.pt", data, cache_dir, demo)
        report(args, demo, result, cache, quality(work / "model.pt", holdout, demo))


if __name__ == "__main__":
    main()
