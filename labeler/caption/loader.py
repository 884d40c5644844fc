"""Decoding images for the caption job in loader processes.

Each task is one content to caption with every path that holds it: the first path that decodes
wins, and the ones that fail are reported with a status and a reason (the file changed or
vanished since the scan). Decoding is `decode.load_rgb` (JPEG draft mode at the smallest DCT
scale that still covers the model's resize, EXIF orientation, odd modes converted) followed by the
captioner's own resize and crop. Workers return uint8 numpy arrays, which pickle as plain bytes;
torch tensors would travel through shared-memory file descriptors, one per image.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from labeler.files import decode
from labeler.pools import worker_pool


@dataclass
class Decoded:
    """The pixels of the first path that decoded (or None), and why the others failed."""

    pixels: np.ndarray | None  # uint8 (3, H, W)
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (path index, status, why)

    def failures(self, work) -> list[tuple[int, str, str]]:  # type: ignore[no-untyped-def]
        """(image id, status, reason) for each path of `work` that failed."""
        return [(work.image_ids[i], status, reason) for i, status, reason in self.errors]


def decode_first(
    paths: Sequence[bytes], preprocess: Callable, min_side: int, max_pixels: int
) -> Decoded:  # type: ignore[type-arg]
    errors = []
    for index, path in enumerate(paths):
        try:
            image = decode.load_rgb(path, max_pixels=max_pixels, draft_size=(min_side, min_side))
        except decode.ImageDecodeError as exc:
            errors.append((index, exc.status, exc.reason))
            continue
        return Decoded(preprocess(image), errors)
    return Decoded(None, errors)


def decode_many(
    tasks: Sequence[Sequence[bytes]], preprocess: Callable, min_side: int, max_pixels: int
) -> list[Decoded]:  # type: ignore[type-arg]
    """`decode_first` for each task (the paths of one content), in one call to a worker."""
    return [decode_first(paths, preprocess, min_side, max_pixels) for paths in tasks]


class Loader:
    """A pool of decoding processes bound to one captioner's preprocessing."""

    def __init__(self, captioner, *, workers: int | None = None,
                 max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        preprocessing = captioner.preprocessing
        self.preprocess = preprocessing.to_array  # Pillow only: no torch in the workers
        self.min_side = int(preprocessing.resize)
        self.max_pixels = max_pixels
        self.workers = (
            max(1, min(4, (multiprocessing.cpu_count() or 2) // 2)) if workers is None else workers
        )
        self._pool: Executor | None = None

    def __enter__(self) -> Loader:
        self._pool = worker_pool(self.workers, preload=["labeler.caption.loader"])
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._pool is not None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, tasks: Sequence[Sequence[bytes]]) -> list[Future[list[Decoded]]]:
        """Decode a batch (one task per content: its paths), split into one chunk per worker.

        A chunk, not an image, per call: the executor's feeder thread needs the GIL for every
        call and every result, and the main thread holds it through the beam search, so calls
        per image would leave the workers idle while the model runs."""
        assert self._pool is not None, "use the Loader as a context manager"
        tasks = [tuple(paths) for paths in tasks]
        size = max(1, -(-len(tasks) // max(1, self.workers)))
        return [
            self._pool.submit(
                decode_many, tasks[i : i + size], self.preprocess, self.min_side, self.max_pixels
            )  # fmt: skip
            for i in range(0, len(tasks), size)
        ]


def stack(pixels: Sequence[np.ndarray], captioner):  # type: ignore[no-untyped-def]
    """One uint8 batch (B, 3, H, W), pinned when the captioner runs on CUDA."""
    import torch

    batch = torch.from_numpy(np.stack(pixels))  # (B, 3, H, W) uint8
    device = getattr(captioner, "device", None)
    if device is not None and torch.device(device).type == "cuda":
        batch = batch.pin_memory()
    return batch
