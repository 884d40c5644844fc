"""`labeler train`, `labeler evaluate`, `labeler scenes` and `labeler demo`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labeler.cli.app import (
    BeamOption,
    BlockRepeatsOption,
    BlockUnkOption,
    DatasetOption,
    DbOption,
    JsonOption,
    LengthPenaltyOption,
    MaxLenOption,
    MinLenOption,
    NBestOption,
    SettingsOption,
    app,
    console,
    decoding_overrides,
    draft_filter,
    err_console,
    open_store_for,
    print_json,
    progress,
)  # fmt: skip
from labeler.errors import InputError

FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="karpathy, flickr8k, coco, csv or jsonl; default: detected."
    ),
]
ImagesOption = Annotated[
    Path | None, typer.Option("--images", help="Images folder; default: beside the file.")
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
WorkersOption = Annotated[
    int | None, typer.Option(help="Image decoding processes; 0 decodes inline.")
]


@app.command("train")
def train_cli(
    data: Annotated[
        Path | None, typer.Argument(help="Captions file (Karpathy/Flickr8k/COCO/CSV/JSONL).")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Model file to write.")] = Path(
        "model.pt"
    ),
    fmt: FormatOption = None,
    images: ImagesOption = None,
    from_store: Annotated[
        bool, typer.Option(help="Train on the reviewed captions in the store instead.")
    ] = False,
    dataset: DatasetOption = None,
    backbone: Annotated[
        str, typer.Option(help="efficientnet_lite0/1/2 or a torchvision backbone (resnet18...).")
    ] = "resnet18",
    pretrained: Annotated[
        str | None, typer.Option(help="ImageNet weights name (DEFAULT); default: random weights.")
    ] = None,
    feature_taps: Annotated[
        str | None,
        typer.Option(
            help="EfficientNet-Lite blocks whose pooled outputs join the features, e.g. 2,5,10."
        ),
    ] = None,
    weights_file: Annotated[
        Path | None, typer.Option(help="Backbone weights from a local .pth instead.")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Model input side in pixels; default: the weights'.")
    ] = None,
    embed_size: Annotated[int, typer.Option(help="Image and word embedding width.")] = 256,
    hidden_size: Annotated[int, typer.Option(help="LSTM width.")] = 256,
    dropout: Annotated[float, typer.Option(help="Dropout on the LSTM's inputs/outputs.")] = 0.3,
    min_word_count: Annotated[int, typer.Option(help="Rarer words become <unk>.")] = 3,
    epochs: Annotated[int, typer.Option(help="The most epochs.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    captions_per_image: Annotated[
        int, typer.Option(help="Captions of each image per epoch; 0: all.")
    ] = 0,
    lr: Annotated[float, typer.Option(help="Peak learning rate (Adam).")] = 2e-3,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without improvement; 0: never.")
    ] = 3,
    fine_tune_encoder: Annotated[
        bool, typer.Option(help="Also train the backbone's last stages (no feature cache).")
    ] = False,
    fine_tune_stages: Annotated[int, typer.Option(help="How many last stages.")] = 1,
    encoder_lr: Annotated[float, typer.Option(help="Learning rate of those stages.")] = 2e-4,
    beam: Annotated[int, typer.Option(help="The model's default beam size.")] = 3,
    n_best: Annotated[int, typer.Option(help="The model's default drafts per image.")] = 1,
    calibrate: Annotated[
        bool, typer.Option(help="Fit p_accept's calibrator on the validation drafts at the end.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Makes a CPU run repeatable.")] = 0,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Feature cache; default: features-cache beside -o.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run that writes -o.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing model file.")] = False,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Train a Show and Tell captioner; keeps the epoch with the lowest validation loss.

    Ctrl-C stops after the current step and keeps the best checkpoint; --resume continues.
    """
    from labeler.training.train import TrainSettings, train

    settings = TrainSettings(
        backbone=backbone, pretrained=pretrained, image_size=image_size,
        weights_file=str(weights_file) if weights_file else None, embed_size=embed_size,
        hidden_size=hidden_size, dropout=dropout, min_word_count=min_word_count, epochs=epochs,
        batch_size=batch_size, captions_per_image=captions_per_image, lr=lr, patience=patience,
        fine_tune_encoder=fine_tune_encoder, fine_tune_stages=fine_tune_stages,
        encoder_lr=encoder_lr, seed=seed, device=device, workers=workers, threads=threads,
        feature_taps=_taps(feature_taps), beam_size=beam, n_best=n_best, calibrate=calibrate,
    )  # fmt: skip
    captions = _training_data(data, fmt, images, from_store, dataset, db)
    with progress("Training", json_output) as report:
        result = train(
            captions, output, settings=settings, resume=resume, force=force, cache_dir=cache_dir,
            progress=lambda p: report(p.done, _step_note(p), p.total),
            on_epoch=None if json_output else _print_epoch,
        )  # fmt: skip
    if json_output:
        print_json(_train_json(result))  # what was done, then the same failure as text mode
        if result.checkpoint is None:
            raise InputError(NOTHING_SAVED)
    else:
        _render_train(result)


NOTHING_SAVED = "interrupted before the first epoch ended: nothing was saved"


def _taps(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip()) if text else ()
    except ValueError:
        raise InputError(f"--feature-taps takes block numbers like 2,5,10, not {text!r}") from None


def _training_data(data, fmt, images, from_store, dataset, db):  # type: ignore[no-untyped-def]
    if from_store:
        from labeler.training.store_reader import read_reviewed

        return read_reviewed(open_store_for(db), datasets=dataset)
    if data is None:
        raise InputError("give a captions file to train on, or --from-store")
    from labeler.training.readers import read_captions

    return read_captions(data, fmt=fmt, images_dir=images)


def _step_note(p) -> str:  # type: ignore[no-untyped-def]
    if p.phase == "features":
        return "backbone features"
    return f"epoch {p.epoch}" + (f", loss {p.loss:.3f}" if p.loss is not None else "")


def _print_epoch(r) -> None:  # type: ignore[no-untyped-def]
    mark = " (best: saved)" if r.best else ""
    err_console.print(
        f"epoch {r.epoch}/{r.epochs}: train {r.train_loss:.3f}, val {r.val_loss:.3f} "
        f"({r.val_token_loss:.3f}/token), lr {r.lr:.2g}, {r.seconds:.1f} s{mark}", markup=False,
        soft_wrap=True,
    )  # fmt: skip
    for sample in r.samples:
        err_console.print(f"  {sample.key}: {sample.caption}", markup=False, soft_wrap=True)


def _train_json(result) -> dict:  # type: ignore[no-untyped-def]
    return {
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "content_hash": result.content_hash, "stopped": result.stopped,
        "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history), "device": result.device, "data": result.data,
        "features_computed": result.features_computed,
        "features_reused": result.features_reused, "elapsed_s": round(result.elapsed_s, 3),
        "decoding": result.decoding.to_dict() if result.decoding else None,
        "calibration": result.calibration.summary() if result.calibration else None,
        "history": [{k: v for k, v in dataclasses.asdict(h).items() if k != "samples"}
                    for h in result.history],
    }  # fmt: skip


def _render_train(result) -> None:  # type: ignore[no-untyped-def]
    data = result.data
    skipped = sum(data["skipped"].values())
    console.print(f"{data['train_images']} training images ({data['train_captions']} captions), "
                  f"{data['val_images']} validation, {skipped} skipped; features: "
                  f"{result.features_computed} computed, {result.features_reused} cached",
                  markup=False)  # fmt: skip
    if result.checkpoint is None:
        raise InputError(NOTHING_SAVED)
    console.print(f"{result.stopped}: best epoch {result.best_epoch} (validation loss "
                  f"{result.best_val_loss:.3f}) -> {result.checkpoint}, "
                  f"{result.elapsed_s:.1f} s on {result.device}", markup=False)  # fmt: skip
    if result.stopped == "interrupted":
        console.print("Run the same command with --resume to continue.")
    elif result.calibration is not None:
        c = result.calibration.summary()
        fitted = (
            f"p_accept calibrated: AUROC {c['auroc']:.2f}, calibration error {c['ece']:.3f}"
            if c["auroc"] is not None and c["ece"] is not None
            else f"no calibrator ({c['reason']}); confidence stands in for p_accept"
        )
        console.print(f"validation drafts: {c['right']}/{c['drafts']} right ({c['criterion']}); "
                      f"{fitted}", markup=False)  # fmt: skip


@app.command("evaluate")
def evaluate_cli(
    data: Annotated[Path | None, typer.Argument(help="Captions file with the split.")] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Checkpoint; with --store, a model name or hash."),
    ] = None,
    split: Annotated[str, typer.Option(help="The split to caption and score.")] = "test",
    fmt: FormatOption = None,
    images: ImagesOption = None,
    store_drafts: Annotated[
        bool, typer.Option("--store", help="Score the store's drafts against reviews instead.")
    ] = False,
    dataset: DatasetOption = None,
    settings_key: SettingsOption = None,
    out: Annotated[Path, typer.Option(help="Folder for results.jsonl and summary.json.")] = Path(
        "evaluation"
    ),
    beam: BeamOption = None,
    max_len: MaxLenOption = None,
    min_len: MinLenOption = None,
    length_penalty: LengthPenaltyOption = None,
    n_best: NBestOption = None,
    block_repeats: BlockRepeatsOption = None,
    block_unk: BlockUnkOption = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 32,
    limit: Annotated[int | None, typer.Option(help="Only the first N images.")] = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    java: Annotated[bool, typer.Option(help="Use Java (PTB tokenizer, METEOR).")] = True,
    force: Annotated[bool, typer.Option(help="Overwrite earlier results.")] = False,
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of a model on a split, or of the store's drafts."""
    from labeler.training.evaluate import evaluate_model, evaluate_store

    if store_drafts:
        spec = draft_filter(dataset=dataset, model=model, settings=settings_key)
        result = evaluate_store(open_store_for(db), spec=spec, out_dir=out, use_java=java,
                                force=force)  # fmt: skip
    else:
        if data is None or model is None:
            raise InputError("give a captions file and --model (or --store)")
        from labeler.training.readers import read_captions

        decode = decoding_overrides(
            beam=beam, max_len=max_len, min_len=min_len, length_penalty=length_penalty,
            n_best=n_best, block_repeats=block_repeats, block_unk=block_unk,
        )  # fmt: skip
        with progress("Captioning", json_output) as report:
            result = evaluate_model(
                model, read_captions(data, fmt=fmt, images_dir=images), split=split,
                overrides=decode, out_dir=out, batch_size=batch_size, device=device,
                workers=workers, limit=limit, use_java=java, force=force,
                progress=lambda done, total: report(done, "", total),
            )  # fmt: skip
    if json_output:
        print_json({**result.summary, "paths": [str(p) for p in result.paths]})
        return
    _render_evaluation(result)


def _render_evaluation(result) -> None:  # type: ignore[no-untyped-def]
    summary = result.summary
    table = Table(*summary["scores"], title=f"{summary['model']}: {summary['images']} images")
    table.add_row(*(f"{v:.3f}" for v in summary["scores"].values()))
    console.print(table)
    for metric, why in summary["skipped_metrics"].items():
        console.print(f"{metric} skipped: {why}", markup=False)
    for reason, n in result.failed.most_common():
        console.print(f"  not captioned {n}: {reason}", markup=False)
    console.print(f"mean confidence {summary['mean_confidence']:.3f}; results in "
                  + ", ".join(str(p) for p in result.paths), markup=False)  # fmt: skip


@app.command("scenes")
def scenes_cli(
    out: Annotated[Path, typer.Argument(help="Folder to write images/ and the JSON into.")],
    count: Annotated[int, typer.Option(help="Scenes to draw.")] = 1000,
    seed: Annotated[int, typer.Option(help="The same seed draws the same files.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
    hard_fraction: Annotated[float, typer.Option(help="Share of degraded scenes.")] = 0.2,
    image_format: Annotated[str, typer.Option("--image-format", help="png or jpeg.")] = "png",
    force: Annotated[bool, typer.Option(help="Replace earlier scenes in OUT.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Draw generated caption scenes: an image folder plus a Karpathy-style JSON (80/10/10)."""
    from labeler.training.scenes import generate_scenes

    with progress("Drawing", json_output) as report:
        result = generate_scenes(
            out, count=count, seed=seed, size=size, hard_fraction=hard_fraction,
            image_format=image_format, overwrite=force,
            on_progress=lambda done, total: report(done, "", total),
        )  # fmt: skip
    if json_output:
        print_json({"json": str(result.json_path), "images": str(result.images_dir),
                    "count": result.count, "hard": result.hard_count,
                    "splits": result.split_counts})  # fmt: skip
        return
    splits = ", ".join(f"{n} {name}" for name, n in result.split_counts.items())
    console.print(f"{result.count} scenes ({result.hard_count} hard; {splits}) -> "
                  f"{result.json_path}", markup=False)  # fmt: skip


@app.command("demo")
def demo_cli(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path(
        "labeler-demo"
    ),
    quick: Annotated[
        bool, typer.Option(help="Seconds instead of minutes: a few tiny scenes.")
    ] = False,
    train_scenes: Annotated[int | None, typer.Option(help="Training scenes.")] = None,
    holdout_scenes: Annotated[int | None, typer.Option(help="Scenes to caption.")] = None,
    epochs: Annotated[int | None, typer.Option(help="The most training epochs.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an earlier demo in the folder.")] = False,
    json_output: JsonOption = False,
) -> None:
    """The whole loop offline: scenes, training, scan, caption, CSV and Label Studio export."""
    from labeler.training.demo import DemoSettings, run_demo

    settings = DemoSettings.quick() if quick else DemoSettings()
    changes = {"train_scenes": train_scenes, "holdout_scenes": holdout_scenes}
    settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v})
    if epochs:
        settings = dataclasses.replace(
            settings, train=dataclasses.replace(settings.train, epochs=epochs)
        )
    with progress("Demo", json_output) as report:
        result = run_demo(out, settings=settings, force=force,
                          progress=lambda step, done, total: report(done, step, total),
                          on_epoch=None if json_output else _print_epoch)  # fmt: skip
    if json_output:
        print_json(_demo_json(result))
    else:
        _render_demo(result)


def _demo_json(result) -> dict:  # type: ignore[no-untyped-def]
    return {
        "files": {k: str(v) for k, v in result.files.items()},
        "quality": dataclasses.asdict(result.quality),
        "best_epoch": result.train.best_epoch, "best_val_loss": result.train.best_val_loss,
        "validation_calibration": (result.train.calibration.summary()
                                   if result.train.calibration else None),
        "features_computed": result.train.features_computed,
        "features_reused": result.train.features_reused, "seconds": result.seconds,
        "drafts": [dataclasses.asdict(d) for d in result.drafts],
        "elapsed_s": round(result.elapsed_s, 1),
    }  # fmt: skip


def _render_demo(result) -> None:  # type: ignore[no-untyped-def]
    table = Table("p_accept", "objects right", "draft", "image",
                  title="Drafts, most likely right first (a sample across the range)")  # fmt: skip
    for d in result.drafts:
        table.add_row(f"{d.p_accept:.3f}", "yes" if d.objects_right else "no", d.text, d.path)
    console.print(table)
    q = result.quality
    share = f"{q.easy_right / q.easy:.0%}" if q.easy else "-"
    console.print(
        f"Held-out scenes: every object right in {q.easy_right}/{q.easy} easy scenes ({share}) "
        f"and {q.objects_right}/{q.captioned} in all; BLEU-4 {_num(q.bleu_4)}; "
        f"{q.distinct}/{q.captioned} distinct drafts ({q.contents} distinct scenes)",
        markup=False,
    )  # fmt: skip
    raw = ", ".join(f"{k} {_num(v)}" for k, v in q.signal_auroc.items())
    console.print(f"p_accept: AUROC {_num(q.auroc)} for right drafts, calibration error "
                  f"{_num(q.ece, 3)} (raw signals' AUROC: {raw})", markup=False)  # fmt: skip
    for what, path in result.files.items():
        console.print(f"  {what:<20} {path}", markup=False)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"Done in {result.elapsed_s:.0f} s ({steps}). Next: open "
                  f"{result.files['label_studio_tasks']} in Label Studio, or run "
                  f"`labeler stats --db {result.files['store']}`.", markup=False)  # fmt: skip


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
