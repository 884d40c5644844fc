"""Backbone features for training: computed once per image content, then read from a disk cache.

With a frozen encoder the backbone is nearly all of a training step's cost and its output for an
image never changes, so it runs once per image: every epoch after the first, and every later run
on the same images with the same backbone, runs only the projection and the decoder.

A cached feature is valid only for the exact function that computed it, so the cache key hashes
everything that function depends on: the backbone's name, its weights (every tensor of its state
dict, BatchNorm statistics included, so two random initialisations never share features and a
resumed run finds its own), the preprocessing (resize, crop, mean, std, interpolation), the
decoding path and the arithmetic (float32, or the autocast dtype on a GPU). Images are keyed by
the sha256 of their bytes: a renamed or copied file keeps its features, an edited one is recomputed.

Layout: `<cache_dir>/<key[:20]>/info.json` (what the key stands for, for people) and
`shard-*.pt` files, each `{"hashes": [...], "features": (N, F) float32}`, loadable with
`weights_only=True`. A shard is written to a temporary file, fsynced and renamed, so a killed run
leaves only whole shards (and keeps those it finished), and concurrent runs never write the same
file. Reading loads every shard of the key: the features of a training set fit in memory (COCO's
120k images at 2048 floats are 1 GB), which is what training needs anyway.

Images are decoded exactly as the caption job decodes them (`loader.decode_first`: JPEG draft
mode, EXIF orientation, the model's Pillow resize and crop), so the features a decoder is trained
on are the ones it will see when captioning.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from labeler.atomic import atomic_binary
from labeler.caption import loader
from labeler.errors import InputError
from labeler.files import decode, probe
from labeler.model.preprocessing import Preprocessing
from labeler.model.show_tell import ShowAndTell
from labeler.pools import worker_pool

FORMAT_VERSION = 1  # bump when what a feature means changes (decoding path, layout)
SHARD_SIZE = 2048  # features per shard: an interrupted extraction keeps all but the last few
DECODE_TASK = 16  # images per task sent to a decoding process


@dataclass
class FeatureSet:
    """Backbone features for a list of images, in that order."""

    features: torch.Tensor  # (N, F) float32 on CPU; rows of failed images are zeros
    failed: dict[int, str] = field(default_factory=dict)  # index -> "status: reason"
    computed: int = 0  # images run through the backbone now
    reused: int = 0  # images whose features came from the cache
    key: str | None = None  # the cache key, None without a cache


def precision_name(device: torch.device, amp: bool) -> str:
    """The arithmetic features are computed in: part of the cache key."""
    if device.type == "cuda" and amp:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_for(device: torch.device, precision: str):  # type: ignore[no-untyped-def]
    """The autocast context for `precision_name`'s answer (a no-op for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor of the module's state dict, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(model: ShowAndTell, *, precision: str = "fp32") -> tuple[str, dict]:
    """The key of `model`'s backbone features, and what it stands for."""
    config = model.config
    parts = {
        "format_version": FORMAT_VERSION,
        "backbone": config.backbone,
        "weights": weights_digest(model.encoder.backbone),
        "weights_source": config.backbone_weights,  # informative only: the digest decides
        "preprocessing": config.preprocessing.to_dict(),
        "decode": "loader.decode_first",
        "precision": precision,
    }
    if config.feature_taps:  # absent without taps, so caches made before taps existed stay valid
        parts["feature_taps"] = list(config.feature_taps)
    hashed = {k: v for k, v in parts.items() if k != "weights_source"}
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest(), parts


class FeatureCache:
    """The shards of one cache key under `root`."""

    def __init__(self, root: str | os.PathLike, key: str, info: dict | None = None) -> None:
        self.folder = Path(root) / key[:20]
        self.key = key
        self.info = info or {}

    def load(self) -> dict[str, torch.Tensor]:
        """Content hash -> feature (F,), from every whole shard of this key."""
        found: dict[str, torch.Tensor] = {}
        for shard in sorted(self.folder.glob("shard-*.pt")):
            try:
                data = torch.load(shard, map_location="cpu", weights_only=True)
                hashes, features = data["hashes"], data["features"]
            except Exception:  # a foreign or damaged file costs a recomputation, not the run
                continue
            found.update(zip(hashes, features, strict=True))
        return found

    def add(self, hashes: Sequence[str], features: torch.Tensor) -> None:
        """Write one shard atomically; (N, F) features for N content hashes."""
        if not hashes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "info.json"
        if not info.exists():
            _atomic_write(info, json.dumps({"key": self.key, **self.info}, indent=2).encode())
        payload = {"hashes": list(hashes), "features": features.detach().float().cpu().clone()}
        name = f"shard-{os.getpid()}-{secrets.token_hex(6)}.pt"
        with atomic_binary(self.folder / name) as output:
            torch.save(payload, output.handle)


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_binary(path) as output:
        output.handle.write(data)


def hash_files(paths: Sequence[Path]) -> list[str | None]:
    """The sha256 of each file's bytes, None where it cannot be read (threads: I/O bound)."""

    def one(path: Path) -> str | None:
        try:
            return probe.hash_file(path)[1]
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, paths))


class PixelReader:
    """Decodes images to the model's uint8 input in worker processes (inline with workers=0)."""

    def __init__(self, preprocessing: Preprocessing, *, workers: int | None = None) -> None:
        self.preprocessing = preprocessing
        cores = os.cpu_count() or 2
        self.workers = max(1, min(4, cores // 2)) if workers is None else workers
        self._pool = None

    def __enter__(self) -> PixelReader:
        self._pool = worker_pool(self.workers, preload=["labeler.caption.loader"])
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def read(self, paths: Sequence[Path]) -> tuple[torch.Tensor, dict[int, str]]:
        """uint8 (B, 3, H, W), zeros where an image failed, and index -> reason for those."""
        raw = [os.fsencode(p) for p in paths]
        size = int(self.preprocessing.resize)
        futures = [
            self._pool.submit(
                loader.decode_many,
                [[p] for p in raw[i : i + DECODE_TASK]],
                self.preprocessing.to_array,
                size,
                decode.DEFAULT_MAX_PIXELS,
            )  # fmt: skip
            for i in range(0, len(raw), DECODE_TASK)
        ]
        decoded = [d for f in futures for d in f.result()]
        crop = int(self.preprocessing.crop)
        pixels = np.zeros((len(paths), 3, crop, crop), np.uint8)  # (B, 3, H, W)
        failed = {}
        for i, d in enumerate(decoded):
            if d.pixels is None:
                status, reason = (d.errors[0][1], d.errors[0][2]) if d.errors else ("?", "?")
                failed[i] = f"{status}: {reason}"
            else:
                pixels[i] = d.pixels
        return torch.from_numpy(pixels), failed


@torch.inference_mode()
def backbone_features(
    model: ShowAndTell, pixels: torch.Tensor, *, device: torch.device, precision: str = "fp32"
) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> backbone features (B, F) float32 on CPU."""
    images = model.config.preprocessing.normalize(pixels.to(device))  # (B, 3, H, W) float32
    with autocast_for(device, precision):
        return model.features(images).float().cpu()  # (B, F)


def compute_features(
    model: ShowAndTell,
    paths: Sequence[Path],
    *,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 64,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureSet:
    """The backbone features of every image in `paths`, computing only those not cached.

    `progress(done, total)` is called after each batch. Images that cannot be decoded get a
    zero row and an entry in `failed`; the caller leaves them out.
    """
    if batch_size < 1:
        raise InputError("batch size must be at least 1")
    device = torch.device(device)
    model.eval()
    hashes = hash_files(paths)
    cache = None
    known: dict[str, torch.Tensor] = {}
    result = FeatureSet(torch.zeros(len(paths), model.encoder.feature_size))
    if cache_dir is not None:
        key, info = cache_key(model, precision=precision)
        cache, result.key = FeatureCache(cache_dir, key, info), key
        known = cache.load()
    todo = []
    for i, h in enumerate(hashes):
        if h is None:
            result.failed[i] = "unreadable: cannot read the file"
        elif h in known:
            result.features[i] = known[h]
            result.reused += 1
        else:
            todo.append(i)
    _compute(model, paths, hashes, todo, result, cache, device, precision, batch_size, workers,
             progress)  # fmt: skip
    return result


def _compute(model, paths, hashes, todo, result, cache, device, precision, batch_size, workers,
             progress) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """Run the backbone over `todo` in batches, writing a shard every SHARD_SIZE images (and
    whatever is done when interrupted)."""
    total = len(paths)
    done = total - len(todo)
    pending_hashes: list[str] = []
    pending: list[torch.Tensor] = []
    if progress is not None:
        progress(done, total)
    if not todo:  # all cached: no decoding processes to start
        return
    try:
        with PixelReader(model.config.preprocessing, workers=workers) as reader:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                pixels, failed = reader.read([paths[i] for i in chunk])
                for j, reason in failed.items():
                    result.failed[chunk[j]] = reason
                keep = [j for j in range(len(chunk)) if j not in failed]
                if keep:
                    feats = backbone_features(model, pixels[keep], device=device,
                                              precision=precision)  # fmt: skip
                    ok = [chunk[j] for j in keep]
                    result.features[ok] = feats
                    result.computed += len(ok)
                    pending_hashes += [hashes[i] for i in ok]
                    pending.append(feats)
                if cache is not None and len(pending_hashes) >= SHARD_SIZE:
                    cache.add(pending_hashes, torch.cat(pending))
                    pending_hashes, pending = [], []
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    finally:
        if cache is not None and pending_hashes:
            cache.add(pending_hashes, torch.cat(pending))


def encoder_stages(backbone: torch.nn.Module) -> list[torch.nn.Module]:
    """The backbone's blocks that hold weights, input to output: resnet's conv1, bn1, layer1..4;
    the children of `features` and `classifier` for the others; a backbone that says its own
    (EfficientNet-Lite's `stages()`) is taken at its word. Fine-tuning trains the last few."""
    if hasattr(backbone, "stages"):
        return list(backbone.stages())
    stages = []
    for name, child in backbone.named_children():
        nested = type(child) is torch.nn.Sequential and name in ("features", "classifier")
        for part in child.children() if nested else [child]:
            if any(True for _ in part.parameters()):
                stages.append(part)
    return stages


def set_train_mode(model: ShowAndTell, frozen_stages: Sequence[torch.nn.Module]) -> None:
    """Training mode, except for backbone stages that are not trained: their BatchNorm keeps
    its statistics and their dropout stays off (ImageEncoder does this for a frozen backbone)."""
    model.train()
    for stage in frozen_stages:
        stage.eval()
