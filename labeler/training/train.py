"""`labeler train`: Show and Tell's recipe on a CaptionSet, resumable and repeatable.

The recipe (Vinyals et al., 2015): a frozen pre-trained encoder, an LSTM decoder trained with
teacher forcing to minimise the summed negative log-likelihood of each reference caption (padding
masked), Adam with gradient clipping and dropout, and the checkpoint kept is the epoch with the
lowest validation loss. With the encoder frozen its features come from `features.py`'s cache, so
an epoch is the decoder alone; `fine_tune_encoder` also trains the backbone's last stages, and
then images are decoded and encoded every step (no cache).

Choices a reader would otherwise have to reverse-engineer:
- A step takes `batch_size` images and `captions_per_image` of each one's captions (all by
  default): the image is encoded once and its embedding repeated for its captions. The loss is
  the summed NLL divided by the number of captions, the paper's per-caption objective.
- Each epoch seeds torch and its own shuffling generator from (seed, epoch), so an epoch does the
  same thing whatever came before it: a resumed run repeats the uninterrupted one exactly on CPU.
- The learning rate warms up linearly, then follows a cosine down to `min_lr_ratio` of the peak
  at the last planned epoch; early stopping ends the run after `patience` epochs without a lower
  validation loss, so the schedule need not be tuned to the data set's size.
- Checkpoints are written atomically and only when the validation loss improves, so Ctrl-C at any
  moment leaves the best one intact; a training state (`<out>.train-state`: weights, optimiser,
  schedule, history) is written after every epoch and removed when the run ends normally.
- A new model with a frozen encoder starts with its projection whitened on the training
  features (the per-feature mean and spread folded into its weights), so the decoder sees
  embeddings that differ between images from the first step, whatever the backbone's scale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from labeler.errors import InputError
from labeler.model.beam import beam_search
from labeler.model.captioner import ShowTellCaptioner, pick_device
from labeler.model.checkpoint import (
    atomic_torch_save,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from labeler.model.drafts import DecodeSettings
from labeler.model.show_tell import ModelConfig, ShowAndTell, build_model
from labeler.model.vocab import Vocabulary
from labeler.training.calibrator import ValidationCalibration, fit_on_validation
from labeler.training.features import (
    PixelReader,
    autocast_for,
    compute_features,
    encoder_stages,
    precision_name,
    set_train_mode,
)
from labeler.training.readers import CaptionSet

STATE_FORMAT = "labeler.train_state"
STATE_VERSION = 1


@dataclass(frozen=True)
class TrainSettings:
    backbone: str = "resnet18"  # a key of labeler.model.encoder.BACKBONES
    pretrained: str | None = None  # torchvision weights name ("DEFAULT"); None: random weights
    weights_file: str | None = None  # a local .pth of the backbone's weights, instead of a download
    # The shorter side is resized to this and the centre square kept; None: what the ImageNet
    # weights expect (resnet: 232 -> 224).
    image_size: int | None = None
    # Blocks whose pooled outputs join the image representation (EfficientNet-Lite only).
    feature_taps: tuple[int, ...] = ()
    embed_size: int = 256
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.3
    min_word_count: int = 3  # rarer words become <unk>
    max_words: int = 30  # longer captions are cut (the end token still follows)
    epochs: int = 20  # the most; early stopping usually ends sooner
    batch_size: int = 64  # images per step
    captions_per_image: int = 0  # captions of each image per epoch, drawn at random; 0: all
    lr: float = 2e-3  # Adam's peak learning rate for the decoder and the projection
    encoder_lr: float = 2e-4  # for the backbone stages trained with fine_tune_encoder
    weight_decay: float = 0.0
    warmup_epochs: float = 0.5  # linear warm-up, in epochs
    min_lr_ratio: float = 0.05  # the cosine ends at lr * this
    grad_clip: float = 5.0  # the most global gradient norm
    patience: int = 3  # epochs without a lower validation loss before stopping; 0: never stop
    fine_tune_encoder: bool = False  # train the backbone's last stages too (no feature cache)
    fine_tune_stages: int = 1  # how many of the backbone's last stages (resnet: layer4 is one)
    val_fraction: float = 0.05  # held out of "train" when the data has no "val" split
    seed: int = 0  # with the same threads, a CPU run repeats to the bit
    device: str = "auto"
    amp: bool | None = None  # mixed precision; None: on CUDA only
    workers: int | None = None  # image decoding processes; 0 decodes inline
    # CPU threads for torch during the run (restored after); None keeps torch's default. On a
    # busy machine one thread can beat two: idle threads spin while they wait for the others.
    threads: int | None = None
    samples: int = 3  # validation images captioned after each epoch, to show progress
    # The decoding defaults the checkpoint carries (max length: the longest training caption).
    beam_size: int = 3
    n_best: int = 1
    calibrate: bool = True  # fit p_accept's calibrator on the validation drafts at the end

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (self.captions_per_image >= 0, "captions per image must not be negative"),
            (self.lr > 0 and self.encoder_lr > 0, "learning rates must be positive"),
            (self.patience >= 0, "patience must not be negative"),
            (self.max_words >= 1, "max words must be at least 1"),
            (0 < self.val_fraction < 1, "val fraction must lie in (0, 1)"),
            (self.fine_tune_stages >= 1, "fine-tune stages must be at least 1"),
            (self.image_size is None or self.image_size >= 16, "image size must be >= 16"),
            (1 <= self.n_best <= self.beam_size, "n-best must be between 1 and the beam size"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"invalid training settings: {message}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainProgress:
    phase: str  # "features" (running the backbone once per image) or "train"
    epoch: int  # 0 while computing features
    done: int  # images (features) or steps (train) done so far
    total: int
    loss: float | None = None  # this epoch's mean summed NLL per caption so far


@dataclass
class SampleCaption:
    key: str
    caption: str  # the model's best beam
    reference: str  # the image's first reference caption


@dataclass
class EpochReport:
    epoch: int
    epochs: int  # the most this run will do
    train_loss: float  # mean summed NLL per caption (with dropout on)
    val_loss: float  # the same on the validation captions: what picks the best epoch
    val_token_loss: float  # per token: exp() of it is the validation perplexity
    lr: float  # the decoder's learning rate at the end of the epoch
    seconds: float
    best: bool  # the lowest validation loss so far: the checkpoint was written
    samples: list[SampleCaption] = field(default_factory=list)


@dataclass
class TrainResult:
    checkpoint: Path | None  # the best epoch's model; None if no epoch finished
    device: str
    data: dict  # images and captions per split, skipped images by reason
    content_hash: str | None = None  # the checkpoint's identity in the store
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped: str = "completed"  # "completed", "early stopping" or "interrupted"
    history: list[EpochReport] = field(default_factory=list)
    decoding: DecodeSettings | None = None  # the defaults the checkpoint carries
    calibration: ValidationCalibration | None = None  # fitted at the end of a finished run
    features_computed: int = 0  # images run through the backbone for the cache
    features_reused: int = 0  # images whose features were cached
    decode_failures: int = 0  # images that could not be decoded (left out)
    timings: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0


class TrainData:
    """The images of a CaptionSet as the trainer needs them: paths, token ids, two splits.

    Training images are those in split "train" or "restval"; validation images those in "val",
    or, when there are none, a fixed share of the training images chosen by a hash of their
    key (the same images whatever the order of the file). Other splits are not used.
    """

    def __init__(self, data: CaptionSet, vocab: Vocabulary, max_words: int, val_fraction: float):
        items = [it for it in data.items if it.split in ("train", "restval", "val")]
        self.paths = [it.image_path for it in items]
        self.keys = [it.key for it in items]
        self.references = [list(it.captions) for it in items]
        self.extras = [it.extra for it in items]
        self.tokens = [
            [vocab.encode(vocab.tokenize(c)[:max_words], add_start_end=True) for c in it.captions]
            for it in items
        ]
        self.train = [i for i, it in enumerate(items) if it.split != "val"]
        self.val = [i for i, it in enumerate(items) if it.split == "val"]
        if not self.train:
            raise InputError(f"{data.source}: no training images (split 'train' or 'restval')")
        if not self.val:
            if len(self.train) < 2:
                raise InputError(f"{data.source}: at least two images are needed to validate")
            ranked = sorted(self.train, key=lambda i: hashlib.sha1(self.keys[i].encode()).digest())
            held = set(ranked[: max(1, round(len(ranked) * val_fraction))])
            self.train = [i for i in self.train if i not in held]
            self.val = sorted(held)
        self.skipped = dict(data.skipped.counts)
        self.source, self.fmt = str(data.source), data.fmt

    def drop(self, failed: dict[int, str]) -> None:
        """Leave out images that could not be decoded, counting them by reason."""
        for reason in failed.values():
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.train = [i for i in self.train if i not in failed]
        self.val = [i for i in self.val if i not in failed]
        if not self.train or not self.val:
            raise InputError("too few images could be decoded to train and validate")

    def summary(self) -> dict:
        captions = sum(len(self.tokens[i]) for i in self.train)
        return {
            "source": self.source, "format": self.fmt, "train_images": len(self.train),
            "val_images": len(self.val), "train_captions": captions, "skipped": self.skipped,
        }  # fmt: skip


class Batches:
    """Batches of (image indices, tokens (R, T), which (R,)): row r is a caption of image
    which[r] of the batch, padded with the pad id. With a generator, images are shuffled and
    `per_image` captions drawn from each (0: all); without, the order is fixed.

    The LSTM runs over every padded position, so images are bucketed: within each window of
    BUCKET batches they are sorted by their longest caption, and then the batches are shuffled.
    A batch pads to a length near its own captions' (half the work on mixed-length captions).
    """

    BUCKET = 32

    def __init__(self, td: TrainData, images: list[int], size: int, per_image: int, gen) -> None:  # type: ignore[no-untyped-def]
        self.td, self.size, self.per_image, self.gen = td, size, per_image, gen
        order = images
        if gen is not None:
            order = [images[i] for i in torch.randperm(len(images), generator=gen)]
        window = size * self.BUCKET
        longest = {i: max(map(len, td.tokens[i])) for i in order}
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s : s + window], key=longest.__getitem__)]  # fmt: skip
        self.chunks = [order[s : s + size] for s in range(0, len(order), size)]
        if gen is not None:
            self.chunks = [self.chunks[i] for i in torch.randperm(len(self.chunks), generator=gen)]

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for chunk in self.chunks:
            rows, which = [], []
            for j, i in enumerate(chunk):
                captions = self.td.tokens[i]
                if self.gen is not None and 0 < self.per_image < len(captions):
                    picks = torch.randperm(len(captions), generator=self.gen)[: self.per_image]
                    captions = [captions[k] for k in picks.tolist()]
                rows += captions
                which += [j] * len(captions)
            tokens = torch.full((len(rows), max(map(len, rows))), Vocabulary.pad_id)  # (R, T)
            for r, ids in enumerate(rows):
                tokens[r, : len(ids)] = torch.tensor(ids)
            yield chunk, tokens, torch.tensor(which)


def state_path(out: str | os.PathLike) -> Path:
    """Where the resumable training state of the model at `out` lives."""
    return Path(f"{out}.train-state")


def train(
    data: CaptionSet,
    out: str | os.PathLike,
    *,
    settings: TrainSettings = TrainSettings(),
    resume: bool = False,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainResult:
    """Train on `data` ("train" and "restval" images; "val" for validation) and keep the best
    epoch at `out`. `resume` continues the interrupted run at `out` with the settings it began
    with. `cache_dir` holds the feature cache (default: `features-cache` beside `out`)."""
    out = Path(out)
    started = time.perf_counter()
    state = _load_state(out) if resume else None
    if state is not None:  # the run's own settings, on this machine's device and cores
        machine = {k: getattr(settings, k) for k in ("device", "workers", "threads")}
        settings = TrainSettings(**{**state["settings"], **machine})
    elif out.exists() and not force:
        raise InputError(f"{out} already exists; use --force to replace it or --resume")
    device = pick_device(settings.device)
    amp = settings.amp if settings.amp is not None else device.type == "cuda"
    model, vocab = _model_and_vocab(data, settings, state)
    model.to(device)
    td = TrainData(data, vocab, settings.max_words, settings.val_fraction)
    result = TrainResult(checkpoint=None, device=str(device), data=td.summary())
    precision = precision_name(device, amp)
    cache = Path(cache_dir) if cache_dir is not None else out.parent / "features-cache"
    run = _Run(model, vocab, td, settings, device, precision, out, result, progress, on_epoch)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads or threads)
    try:
        run.prepare_inputs(cache, fresh=state is None)
        run.optimiser()
        run.restore(state)
        run.loop()
        if settings.calibrate and result.checkpoint is not None:
            run.calibrate()
    except KeyboardInterrupt:
        result.stopped = "interrupted"
    finally:
        torch.set_num_threads(threads)
        run.close()
    if result.stopped != "interrupted":
        state_path(out).unlink(missing_ok=True)
    result.elapsed_s = time.perf_counter() - started
    return result


def _model_and_vocab(data: CaptionSet, settings: TrainSettings, state: dict | None):  # type: ignore[no-untyped-def]
    if state is not None:
        vocab = Vocabulary.from_dict(state["vocab"])
        model = ShowAndTell(ModelConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"])
        return model, vocab
    torch.manual_seed(settings.seed)  # the new model's initial weights
    captions = (c for it in data.items if it.split in ("train", "restval") for c in it.captions)
    vocab = Vocabulary.build(captions, min_count=settings.min_word_count)
    if len(vocab) <= 4:
        raise InputError("no words to learn: the training captions are empty")
    config = ModelConfig(
        backbone=settings.backbone, embed_size=settings.embed_size,
        hidden_size=settings.hidden_size, num_layers=settings.num_layers,
        dropout=settings.dropout, vocab_size=len(vocab), frozen=not settings.fine_tune_encoder,
        feature_taps=tuple(settings.feature_taps),
    )  # fmt: skip
    model = build_model(config, pretrained=settings.pretrained, weights_file=settings.weights_file)
    if settings.image_size is not None:
        size = settings.image_size
        preprocessing = dataclasses.replace(model.config.preprocessing, resize=size, crop=size)
        model.config = dataclasses.replace(model.config, preprocessing=preprocessing)
    return model, vocab


def _load_state(out: Path) -> dict:
    path = state_path(out)
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} is missing (the run finished or never began)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a readable training state: {exc}") from None
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise InputError(f"{path} is not a training state this labeler can resume")
    return state


class _Run:
    """One training run's moving parts; `loop` is the epoch loop."""

    def __init__(self, model, vocab, td, settings, device, precision, out, result, progress,
                 on_epoch) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        self.model, self.vocab, self.td, self.s = model, vocab, td, settings
        self.device, self.precision, self.out, self.result = device, precision, out, result
        self.progress, self.on_epoch = progress or (lambda p: None), on_epoch or (lambda r: None)
        self.features: torch.Tensor | None = None
        self.reader: PixelReader | None = None
        self.first_epoch, self.bad_epochs = 1, 0
        self.frozen_stages: list[torch.nn.Module] = []

    def optimiser(self) -> None:
        """Adam over the head (and the trained backbone stages), with the warm-up + cosine
        schedule; after prepare_inputs, which may leave images out."""
        s, model = self.s, self.model
        head = [p for n, p in model.named_parameters() if not n.startswith("encoder.backbone.")]
        groups = [{"params": head, "lr": s.lr}]
        if not model.config.frozen:
            stages = encoder_stages(model.encoder.backbone)
            trained = stages[-s.fine_tune_stages :]
            self.frozen_stages = stages[: -s.fine_tune_stages]
            model.encoder.backbone.requires_grad_(False)
            for stage in trained:
                stage.requires_grad_(True)
            groups.append({"params": [p for st in trained for p in st.parameters()],
                           "lr": s.encoder_lr})  # fmt: skip
        self.opt = torch.optim.Adam(groups, weight_decay=s.weight_decay)
        self.steps_per_epoch = max(1, math.ceil(len(self.td.train) / s.batch_size))
        total, warmup = s.epochs * self.steps_per_epoch, s.warmup_epochs * self.steps_per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            t = min(1.0, (step - warmup) / max(1.0, total - warmup))
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)
        # float16 gradients underflow without loss scaling; bfloat16 and float32 need none
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare_inputs(self, cache_dir: Path, *, fresh: bool) -> None:
        """Cached backbone features (frozen) or an image reader (fine-tuning)."""
        if not self.model.config.frozen:
            self.reader = PixelReader(self.model.config.preprocessing, workers=self.s.workers)
            self.reader.__enter__()
            return
        t0 = time.perf_counter()
        fs = compute_features(
            self.model, self.td.paths, cache_dir=cache_dir, device=self.device,
            precision=self.precision, workers=self.s.workers,
            progress=lambda done, total: self.progress(TrainProgress("features", 0, done, total)),
        )  # fmt: skip
        self.td.drop(fs.failed)
        self.features = fs.features
        self.result.features_computed, self.result.features_reused = fs.computed, fs.reused
        self.result.timings["features_s"] = round(time.perf_counter() - t0, 3)
        if fresh:
            _whiten_projection(self.model, fs.features[self.td.train])

    def restore(self, state: dict | None) -> None:
        if state is None:
            return
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.first_epoch = state["epoch"] + 1
        self.bad_epochs = state["bad_epochs"]
        self.result.history = [
            EpochReport(**{**h, "samples": [SampleCaption(**x) for x in h["samples"]]})
            for h in state["history"]
        ]
        self.result.best_epoch, self.result.best_val_loss = state["best_epoch"], state["best"]
        if self.out.exists():
            self.result.checkpoint, self.result.content_hash = self.out, file_sha256(self.out)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.__exit__(None, None, None)

    def loop(self) -> None:
        s, result = self.s, self.result
        for epoch in range(self.first_epoch, s.epochs + 1):
            t0 = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            val_loss, val_token_loss = self.validate()
            best = val_loss < result.best_val_loss
            report = EpochReport(
                epoch=epoch, epochs=s.epochs, train_loss=train_loss, val_loss=val_loss,
                val_token_loss=val_token_loss, lr=self.sched.get_last_lr()[0],
                seconds=round(time.perf_counter() - t0, 3), best=best, samples=self.samples(),
            )  # fmt: skip
            result.history.append(report)
            self.bad_epochs = 0 if best else self.bad_epochs + 1
            if best:
                self.keep_best(epoch, val_loss)
            self.save_state(epoch)
            self.on_epoch(report)
            if s.patience and self.bad_epochs >= s.patience:
                result.stopped = "early stopping"
                return
        result.stopped = "completed"

    def keep_best(self, epoch: int, val_loss: float) -> None:
        """Write the checkpoint (atomically), then record it: an interrupted write changes
        neither the file nor the result."""
        meta = self.metadata(epoch, val_loss)
        decoding = self.decoding().to_dict()
        digest = save_checkpoint(self.out, self.model, self.vocab, training=meta, decoding=decoding)
        self.result.checkpoint, self.result.content_hash = self.out, digest
        self.result.best_epoch, self.result.best_val_loss = epoch, val_loss

    def decoding(self) -> DecodeSettings:
        """The checkpoint's decoding defaults: room for the longest training caption's words and
        its end token, so no draft is cut shorter than what the model learnt."""
        longest = max(len(ids) - 2 for i in self.td.train for ids in self.td.tokens[i])
        s = self.s
        return DecodeSettings(beam_size=s.beam_size, max_len=longest + 1, n_best=s.n_best)

    def calibrate(self) -> None:
        """Decode the validation split with the best epoch's weights and the decoding defaults,
        fit the calibrator, and keep both in the checkpoint (written atomically again)."""
        loaded = load_checkpoint(self.out)
        captioner = ShowTellCaptioner(loaded, device=self.device)
        decoding = self.decoding()
        fitted = fit_on_validation(
            captioner,
            self.encoder_inputs,
            self.td.val, references=self.td.references, extras=self.td.extras,
            settings=decoding, batch_size=self.s.batch_size,
        )  # fmt: skip
        meta = {**loaded.training, "calibration": fitted.summary()}
        calibrator = fitted.calibrator.to_dict() if fitted.calibrator is not None else None
        self.result.content_hash = save_checkpoint(
            self.out, loaded.model, loaded.vocab, training=meta, decoding=decoding.to_dict(),
            calibrator=calibrator,
        )  # fmt: skip
        self.result.decoding, self.result.calibration = decoding, fitted

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training images; the mean summed NLL per caption."""
        gen = _seeded(self.s.seed, epoch)
        set_train_mode(self.model, self.frozen_stages)
        batches = Batches(self.td, self.td.train, self.s.batch_size, self.s.captions_per_image, gen)
        total, captions = 0.0, 0
        for step, (images, tokens, which) in enumerate(batches, 1):
            x, tokens, which = self.inputs(images, tokens, which)
            if not len(tokens):
                continue
            with autocast_for(self.device, self.precision):
                loss, _ = self.nll(x, tokens, which)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss / tokens.size(0)).backward()
            self.scaler.unscale_(self.opt)
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.s.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            total, captions = total + loss.item(), captions + tokens.size(0)
            mean = total / captions
            self.progress(TrainProgress("train", epoch, step, len(batches), mean))
        return total / max(1, captions)

    def inputs(self, images: list[int], tokens, which):  # type: ignore[no-untyped-def]
        """The encoder's input for these images: cached features, or freshly decoded pixels
        (the captions of images that fail to decode are left out)."""
        if self.features is not None:
            return self.features[images].to(self.device), tokens, which
        pixels, failed = self.reader.read([self.td.paths[i] for i in images])
        if failed:
            self.result.decode_failures += len(failed)
            rows = torch.tensor([w not in failed for w in which.tolist()])
            tokens, which = tokens[rows], which[rows]
        return self.model.config.preprocessing.normalize(pixels.to(self.device)), tokens, which

    def encoder_inputs(self, images: list[int]) -> torch.Tensor:
        """Just the encoder's input for these images (features, or pixels: failures zeroed)."""
        return self.inputs(images, torch.zeros(len(images), 2), torch.arange(len(images)))[0]

    def nll(self, x, tokens, which) -> tuple[torch.Tensor, int]:  # type: ignore[no-untyped-def]
        """Summed NLL of tokens (R, T) given inputs x (B, ...) and which (R,) row -> image."""
        tokens, which = tokens.to(self.device), which.to(self.device)
        embedding = self.model.encode(x)[which]  # (R, E): each image encoded once
        logits = self.model.decoder(embedding.float(), tokens)  # (R, T-1, V)
        targets = tokens[:, 1:]  # (R, T-1)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=Vocabulary.pad_id,
            reduction="sum",
        )  # fmt: skip
        return loss, int((targets != Vocabulary.pad_id).sum())

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Mean summed NLL per caption and per token over every validation caption."""
        self.model.eval()
        total, captions, tokens_seen = 0.0, 0, 0
        for images, tokens, which in Batches(self.td, self.td.val, self.s.batch_size, 0, None):
            x, tokens, which = self.inputs(images, tokens, which)
            if not len(tokens):
                continue
            with autocast_for(self.device, self.precision):
                loss, n = self.nll(x, tokens, which)
            total += loss.item()
            captions += len(tokens)
            tokens_seen += n
        return total / max(1, captions), total / max(1, tokens_seen)

    @torch.no_grad()
    def samples(self) -> list[SampleCaption]:
        chosen = self.td.val[: self.s.samples]
        if not chosen:
            return []
        self.model.eval()
        x = self.encoder_inputs(chosen)
        with autocast_for(self.device, self.precision):
            embedding = self.model.encode(x).float()  # (B, E)
        hyps = beam_search(
            self.model.step, self.model.init_state(embedding), embedding.size(0),
            start_id=Vocabulary.start_id, end_id=Vocabulary.end_id, unk_id=Vocabulary.unk_id,
            settings=DecodeSettings(beam_size=3, max_len=self.s.max_words + 1),
            banned_ids=(Vocabulary.pad_id, Vocabulary.start_id),
        )  # fmt: skip
        words = [[self.vocab.itos[t] for t in h[0].token_ids] if h else [] for h in hyps]
        return [
            SampleCaption(self.td.keys[i], self.vocab.detokenize(w), self.td.references[i][0])
            for i, w in zip(chosen, words, strict=False)
        ]

    def metadata(self, epoch: int, val_loss: float) -> dict:
        """What the checkpoint says about its training: plain values only."""
        history = [{"epoch": h.epoch, "train_loss": h.train_loss, "val_loss": h.val_loss}
                   for h in self.result.history]  # fmt: skip
        # Decoding processes and threads change how fast, not what: same model, same bytes.
        settings = {k: v for k, v in self.s.to_dict().items() if k not in ("workers", "threads")}
        return {"data": self.result.data, "settings": settings, "best_epoch": epoch,
                "val_loss": val_loss, "device": self.result.device, "history": history}  # fmt: skip

    def save_state(self, epoch: int) -> None:
        r = self.result
        state = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "epoch": epoch,
            "settings": self.s.to_dict(), "config": self.model.config.to_dict(),
            "vocab": self.vocab.to_dict(), "bad_epochs": self.bad_epochs,
            "best_epoch": r.best_epoch, "best": r.best_val_loss,
            "history": [dataclasses.asdict(h) for h in r.history],
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
        }  # fmt: skip
        atomic_torch_save(state, state_path(self.out))


def _seeded(seed: int, epoch: int) -> torch.Generator:
    """Seed torch (dropout) and return a generator (order, caption draws) for this epoch."""
    torch.manual_seed(seed * 100_003 + epoch)
    return torch.Generator().manual_seed(seed * 100_019 + epoch)


@torch.no_grad()
def _whiten_projection(model: ShowAndTell, features: torch.Tensor) -> None:
    """Fold (f - mean) / std of the training features into the projection's weights."""
    if features.size(0) < 2:
        return
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)  # (F,)
    project = model.encoder.project
    project.weight.div_(std.to(project.weight.device))
    project.bias.sub_(project.weight @ mean.to(project.weight.device))
