"""`labeler demo`: the whole loop offline, on generated scenes, in a few minutes on a laptop CPU.

It runs the same library functions the commands run, in order: draw caption scenes (a training
set with a validation split, and a held-out folder), train a small Show and Tell model on them
(which ends by fitting p_accept's calibrator on the validation drafts), scan the held-out folder
into a fresh store, caption it with the checkpoint's own decoding defaults, export the drafts as
CSV and as Label Studio tasks, and pick a few drafts to show. Nothing is downloaded: the encoder
is EfficientNet-Lite0 with the ImageNet weights its installed package ships.

Because the held-out scenes come with their truth, the demo says how good the drafts are (the
share of easy scenes with every object right, BLEU-4 against the references, distinct drafts)
and how well p_accept triages them (its AUROC for "every object right" and its calibration
error), beside the AUROC of each raw signal.

Everything lands in one folder; a second run with `force` replaces the scenes, model, store and
exports but keeps the feature cache, whose key still matches (same seed, same backbone).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from labeler.errors import InputError, LabelerError
from labeler.training.train import EpochReport, TrainProgress, TrainResult, TrainSettings

# EfficientNet-Lite0 with its packaged ImageNet weights, frozen, on 64-pixel scenes: features once
# (cached, ~2.5 ms an image), then twenty decoder epochs of ~8 s. The representation adds the pooled
# outputs of ten of its blocks to the head's: the colours live in the early blocks, the shapes
# in the later ones, and the head alone names one object in four right. Small batches at a
# high, decaying learning rate: a short run needs many steps. One torch thread: a small LSTM
# gains little from a second, and on a busy machine the threads wait on each other.
DEMO_TRAIN = TrainSettings(
    backbone="efficientnet_lite0", pretrained="DEFAULT", image_size=64,
    feature_taps=(1, 2, 3, 4, 5, 7, 8, 10, 11, 14), embed_size=128, hidden_size=128,
    dropout=0.2, min_word_count=1, epochs=20, batch_size=32, captions_per_image=2, lr=5e-3,
    warmup_epochs=0.3, min_lr_ratio=0.05, patience=3, threads=1, n_best=2,
)  # fmt: skip
QUICK_TRAIN = dataclasses.replace(
    DEMO_TRAIN, image_size=32, feature_taps=(), embed_size=32, hidden_size=32, epochs=2,
    batch_size=16, workers=0, samples=1,
)  # fmt: skip
OUTPUTS = ("scenes", "holdout", "model.pt", "labeler.db", "drafts.csv", "tasks.json",
           "tasks.config.xml")  # fmt: skip


@dataclass(frozen=True)
class DemoSettings:
    train_scenes: int = 10000  # scenes the model learns from
    val_scenes: int = 500  # scenes that pick the best epoch and fit the calibrator
    # The "new" folder that is scanned, captioned and exported. 1,000 so that the calibration
    # error means something: judged on 300 drafts, even a perfect calibrator scores ~0.05.
    holdout_scenes: int = 1000
    scene_size: int = 64  # pixels of the generated images (the model's input size is in train)
    train: TrainSettings = DEMO_TRAIN  # its beam and n-best become the model's decoding defaults
    seed: int = 0
    show: int = 8  # drafts in the table, spread over the confidence range
    workers: int | None = None  # scan and caption processes; 0 works inline

    @classmethod
    def quick(cls) -> DemoSettings:
        """A run of seconds, for tests and a first look: a few dozen tiny scenes."""
        return cls(train_scenes=40, val_scenes=12, holdout_scenes=8, scene_size=48,
                   train=QUICK_TRAIN, show=4, workers=0)  # fmt: skip


@dataclass
class DemoDraft:
    path: str  # relative to the held-out folder's images
    text: str
    p_accept: float
    confidence: float
    objects_right: bool  # names every object's colour and shape, and nothing else


@dataclass
class Quality:
    """The held-out drafts judged against the scenes' truth."""

    captioned: int  # held-out images that got drafts
    objects_right: int  # of which the best draft names every object right
    easy: int  # held-out scenes the generator made easy (not degraded)
    easy_right: int  # of which the draft names every object right
    bleu_4: float | None  # corpus BLEU-4 against the five references
    distinct: int  # different best drafts
    # Different scenes (layout, and each object's colour, shape and size): a bound on how many
    # drafts can differ while saying what is there (single objects come in only 60 kinds).
    contents: int
    auroc: float | None  # how well p_accept ranks right drafts above wrong ones
    ece: float | None  # p_accept's expected calibration error for "objects right"
    signal_auroc: dict[str, float | None] = field(default_factory=dict)  # each raw signal's


@dataclass
class DemoResult:
    out_dir: Path
    files: dict[str, Path]  # what -> where: scenes, holdout, model, store, csv, tasks...
    train: TrainResult
    quality: Quality
    drafts: list[DemoDraft] = field(default_factory=list)  # the table, by p_accept
    seconds: dict[str, float] = field(default_factory=dict)  # per step
    elapsed_s: float = 0.0


def run_demo(
    out_dir: str | Path = "labeler-demo",
    *,
    settings: DemoSettings = DemoSettings(),
    force: bool = False,
    progress: Callable[[str, int, int | None], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> DemoResult:
    """Run the loop into `out_dir`; `progress(step, done, total)` follows each step."""
    out = Path(out_dir).absolute()
    _prepare(out, force)
    report = progress or (lambda step, done, total: None)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with _timed(seconds, "scenes"):
        scenes, holdout = _scenes(out, settings, report)
    with _timed(seconds, "train"):
        trained = _train(out, scenes, settings, report, on_epoch)
    store = _open_store(out)
    try:
        with _timed(seconds, "scan+caption"):
            _scan_and_caption(store, out, holdout, settings, report)
        with _timed(seconds, "export"):
            files = _export(store, out)
        quality, drafts = _summarise(store, holdout, settings)
    finally:
        store.dispose()
    files = {"scenes": scenes, "holdout": holdout.parent, "model": out / "model.pt",
             "store": out / "labeler.db", **files}  # fmt: skip
    return DemoResult(
        out_dir=out, files=files, train=trained, quality=quality, drafts=drafts,
        seconds=seconds, elapsed_s=time.perf_counter() - started,
    )  # fmt: skip


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t0, 2)


def _prepare(out: Path, force: bool) -> None:
    """Refuse a folder with other content; with `force`, remove the demo's own earlier outputs."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise InputError(f"{out} is not empty; use --force to replace an earlier demo in it")
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            for path in [target, *out.glob(f"{name}-*")]:  # the store's -wal and -shm
                if path.is_file():
                    path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _scenes(out: Path, settings: DemoSettings, report) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    from labeler.training.scenes import generate_scenes

    count = settings.train_scenes + settings.val_scenes
    made = generate_scenes(
        out / "scenes", count=count, seed=settings.seed, size=settings.scene_size,
        splits={"train": settings.train_scenes / count, "val": settings.val_scenes / count},
        on_progress=lambda done, total: report("scenes", done, total),
    )  # fmt: skip
    held = generate_scenes(
        out / "holdout", count=settings.holdout_scenes, seed=settings.seed + 1,
        size=settings.scene_size, splits="test",
    )  # fmt: skip
    return made.json_path, held.json_path


def _train(out: Path, scenes: Path, settings: DemoSettings, report, on_epoch) -> TrainResult:  # type: ignore[no-untyped-def]
    from labeler.training.readers import read_captions
    from labeler.training.train import train

    def follow(p: TrainProgress) -> None:
        report("features" if p.phase == "features" else f"epoch {p.epoch}", p.done, p.total)

    trained = train(
        read_captions(scenes), out / "model.pt", settings=settings.train, force=True,
        cache_dir=out / "features-cache", progress=follow, on_epoch=on_epoch,
    )  # fmt: skip
    if trained.stopped == "interrupted":  # Ctrl-C in a demo means stop, not carry on
        raise LabelerError("demo interrupted while training; run it again with --force")
    return trained


def _open_store(out: Path):  # type: ignore[no-untyped-def]
    from labeler.store import open_store

    return open_store(str(out / "labeler.db"))


def _scan_and_caption(store, out: Path, holdout: Path, settings: DemoSettings, report) -> None:  # type: ignore[no-untyped-def]
    from labeler.caption.job import caption_images
    from labeler.files.scan import scan
    from labeler.model.captioner import ShowTellCaptioner

    scan(store, [holdout.parent / "images"], dataset="demo-holdout", workers=settings.workers,
         progress=lambda p: report("scan", p.files, None))  # fmt: skip
    captioner = ShowTellCaptioner.from_checkpoint(out / "model.pt", device=settings.train.device)
    caption_images(
        store, captioner, settings=captioner.decoding, workers=settings.workers, batch_size=64,
        procs=0 if settings.workers == 0 else None,
        progress=lambda p: report("caption", p.done, p.total),
    )  # fmt: skip


def _export(store, out: Path) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    from labeler.formats.labelstudio import config_path
    from labeler.review.export import export_drafts

    export_drafts(store, "csv", out / "drafts.csv", n_best=2, force=True)
    tasks = out / "tasks.json"
    export_drafts(store, "label-studio", tasks, n_best=2, force=True, document_root=out)
    return {"csv": out / "drafts.csv", "label_studio_tasks": tasks,
            "label_studio_config": config_path(tasks)}  # fmt: skip


def _summarise(store, holdout: Path, settings: DemoSettings) -> tuple[Quality, list[DemoDraft]]:  # type: ignore[no-untyped-def]
    """The held-out drafts judged against the scenes' truth, and the table to show."""
    from labeler.calibration import SIGNALS, auroc, expected_calibration_error
    from labeler.review.stats import signals as row_signals
    from labeler.store.drafts import DraftFilter, iter_drafts
    from labeler.training.metrics import score_captions
    from labeler.training.readers import read_captions
    from labeler.training.scenes import objects_right

    truth = {item.key.removeprefix("images/"): item for item in read_captions(holdout).items}
    with store.session() as session:
        rows = list(iter_drafts(session, DraftFilter(), sort="p_accept"))
    drafts = [DemoDraft(r.path, r.text, r.p_accept, r.confidence,
                        objects_right(r.text, truth[r.path].extra["objects"]))
              for r in rows]  # fmt: skip
    right = [d.objects_right for d in drafts]
    easy = [not truth[r.path].extra["hard"] for r in rows]
    references = {r.path: truth[r.path].captions for r in rows}
    bleu = score_captions(references, {r.path: r.text for r in rows}, use_java=False).bleu_4
    per_row = [row_signals(r) for r in rows]
    signals = {name: [v[i] for v in per_row] for i, name in enumerate(SIGNALS)}
    quality = Quality(
        captioned=len(rows), objects_right=sum(right), easy=sum(easy),
        easy_right=sum(r and e for r, e in zip(right, easy, strict=True)), bleu_4=bleu,
        distinct=len({d.text for d in drafts}), contents=len({_content(truth[r.path].extra)
                                                               for r in rows}),
        auroc=auroc([d.p_accept for d in drafts], right),
        ece=expected_calibration_error([d.p_accept for d in drafts], right),
        signal_auroc={"confidence": auroc([d.confidence for d in drafts], right)}
        | {name: auroc(values, right) for name, values in signals.items()},
    )  # fmt: skip
    n = min(settings.show, len(drafts))
    picks = sorted({round(i * (len(drafts) - 1) / max(1, n - 1)) for i in range(n)})
    return quality, [drafts[i] for i in reversed(picks)]


def _content(extra: dict) -> tuple:
    objects = tuple((o["colour"], o["shape"], o["size"]) for o in extra["objects"])
    return extra["layout"], objects
