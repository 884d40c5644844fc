"""The captioner interface the caption job uses, and its Show and Tell implementation.

A captioner is anything with an identity, a name, a `preprocess` for one decoded image and a
`caption` for a batch of preprocessed images that returns n-best drafts with their confidence
fields. The caption job depends only on `Captioner`, so another model family plugs in by
implementing these four members. `ShowTellFile` is a Show and Tell checkpoint read but not built
(checkpoint.py's `read_checkpoint_info`): the members the caption job's main process needs when
model processes run the model (caption/engines.py), and `load` to build it where it runs.

`preprocess` returns uint8 pixels and `caption` normalises them on the model's device (see
preprocessing.py). On CUDA the encoder runs under autocast (bfloat16 where supported, else float16)
and in channels_last, where the convolutions are fastest; the decoder and the beam search always
run in float32, so a draft's log-likelihood does not depend on the device's half-precision
arithmetic more than it has to.

On a CPU the encoder runs the batch in slices of `CPU_ENCODER_SLICE` images: a convolution's
working set for 32 images at 224 pixels overflows the caches, and 8 at a time is faster per image
(resnet50, one thread of this project's 2-core machine: 225 ms an image in slices of 8, 313 ms in
one call of 32; one image at a time, 225 ms). The beam search still decodes the whole batch at
once, which is where batching pays on a CPU.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from labeler.calibration import Calibrator
from labeler.errors import ModelError
from labeler.model.beam import Hypothesis, beam_search
from labeler.model.checkpoint import (
    CheckpointInfo,
    LoadedCheckpoint,
    load_checkpoint,
    read_checkpoint_info,
)
from labeler.model.drafts import DecodeSettings, Draft, ImageDrafts
from labeler.model.preprocessing import Preprocessing

CPU_ENCODER_SLICE = 8  # images per encoder call on a CPU

__all__ = [
    "Captioner",
    "DecodeSettings",
    "Draft",
    "ImageDrafts",
    "ShowTellCaptioner",
    "ShowTellFile",
    "pick_device",
]


@runtime_checkable
class Captioner(Protocol):
    identity: str  # content hash of the model file: drafts are stored per identity
    name: str  # short human-readable version, e.g. Label Studio's model_version
    input_size: tuple[int, int]  # (H, W) of what preprocess returns
    # What preprocess does, as data: decoding workers use it (e.g. to_tensor, JPEG draft size).
    preprocessing: Preprocessing

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> uint8 tensor (3, H, W); safe to call in worker processes."""
        ...

    def caption(self, images: torch.Tensor, settings: DecodeSettings) -> list[ImageDrafts]:
        """A batch (B, 3, H, W) of preprocess outputs -> one ImageDrafts per image, in order."""
        ...


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a name: auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but CUDA is not available here")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} asked for, but MPS is not available here")
    return chosen


class ShowTellCaptioner:
    """Show and Tell behind the Captioner interface."""

    def __init__(
        self,
        loaded: LoadedCheckpoint,
        *,
        device: str | torch.device = "auto",
        channels_last: bool | None = None,  # None: on CUDA only
        autocast: bool | None = None,  # None: on CUDA only; encoder only
    ) -> None:
        described = ShowTellFile.of(loaded, device=device, channels_last=channels_last)
        self.device = described.device
        self.channels_last = described.channels_last
        self.autocast = self.device.type == "cuda" if autocast is None else autocast
        self.model = loaded.model.to(self.device).eval()
        if self.channels_last:
            self.model.encoder.to(memory_format=torch.channels_last)
        self.vocab = loaded.vocab
        self.preprocessing = described.preprocessing
        self.identity = described.identity
        self.source: Path | None = described.source  # where another process can load it from
        self.name = described.name
        self.input_size = described.input_size
        # Optional members a plug-in captioner may lack (read them with getattr): the decoding
        # settings the model was validated with, and its calibrator (p_accept from signals).
        self.decoding: DecodeSettings | None = described.decoding
        self.calibrator: Calibrator | None = described.calibrator

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "auto", **kwargs):
        return cls(load_checkpoint(path), device=device, **kwargs)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.preprocessing.to_tensor(image)

    def caption(self, images: torch.Tensor, settings: DecodeSettings) -> list[ImageDrafts]:
        """uint8 pixels as from `preprocess`; a floating tensor is taken as already normalised."""
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        with torch.inference_mode():
            return self._search(self._encode(images), settings)

    def caption_features(
        self, features: torch.Tensor, settings: DecodeSettings
    ) -> list[ImageDrafts]:
        """Backbone features (B, F), as the training feature cache holds them -> drafts."""
        with torch.inference_mode():
            embedding = self.model.encode(features.to(self.device).float())  # (B, E)
            return self._search(embedding, settings)

    def _search(self, embedding: torch.Tensor, settings: DecodeSettings) -> list[ImageDrafts]:
        """Image embeddings (B, E) -> the batched beam search's n-best drafts per image."""
        hyps = beam_search(
            self.model.step,
            self.model.init_state(embedding),
            embedding.size(0),
            start_id=self.vocab.start_id,
            end_id=self.vocab.end_id,
            unk_id=self.vocab.unk_id,
            settings=settings,
            banned_ids=(self.vocab.pad_id, self.vocab.start_id),
            device=self.device,
        )
        return [self._drafts(h, settings.n_best) for h in hyps]

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if not images.is_floating_point():
            images = self.preprocessing.normalize(images)  # (B, 3, H, W) float32
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        amp = nullcontext()
        if self.autocast and self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            amp = torch.autocast("cuda", dtype=dtype)
        step = CPU_ENCODER_SLICE if self.device.type == "cpu" else images.size(0)
        with amp:
            features = torch.cat(
                [self.model.features(part) for part in images.split(max(1, step))]
            )  # (B, F)
        return self.model.encode(features.float())  # (B, E): the projection in float32

    def _drafts(self, hyps: list[Hypothesis], n_best: int) -> ImageDrafts:
        if not hyps:
            raise ModelError("the decoding settings leave no caption possible for this model")
        drafts = [self._draft(h) for h in hyps]
        margin = drafts[0].log_likelihood - drafts[1].log_likelihood if len(drafts) > 1 else None
        return ImageDrafts(drafts=drafts[:n_best], margin=margin)

    def _draft(self, hyp: Hypothesis) -> Draft:
        words = [self.vocab.itos[i] for i in hyp.token_ids]
        return Draft.build(
            words,
            hyp.token_ids,
            hyp.token_logprobs,
            finished=hyp.finished,
            score=hyp.score,
            unk_id=self.vocab.unk_id,
            text=self.vocab.detokenize(words),
        )


@dataclass(frozen=True)
class ShowTellFile:
    """A Show and Tell checkpoint read but not built: the members of ShowTellCaptioner that a
    process which records the run but leaves the model to other processes needs (identity,
    name, preprocessing, decoding defaults, calibrator), from `read_checkpoint_info`, and the
    file to build it from (`load`)."""

    source: Path
    identity: str
    name: str
    preprocessing: Preprocessing
    input_size: tuple[int, int]
    decoding: DecodeSettings | None
    calibrator: Calibrator | None
    device: torch.device
    channels_last: bool

    @classmethod
    def read(
        cls, path: str | Path, *, device: str | torch.device = "auto",
        channels_last: bool | None = None,
    ) -> ShowTellFile:  # fmt: skip
        return cls.of(read_checkpoint_info(path), device=device, channels_last=channels_last)

    @classmethod
    def of(
        cls, info: CheckpointInfo, *, device: str | torch.device = "auto",
        channels_last: bool | None = None,  # None: on CUDA only
    ) -> ShowTellFile:  # fmt: skip
        if len(info.vocab) <= 4:
            raise ModelError(f"{info.path} has an empty vocabulary")
        chosen = pick_device(device)
        crop = info.preprocessing.crop
        return cls(
            source=info.path, identity=info.content_hash,
            name=f"show-tell-{info.content_hash[:6]}", preprocessing=info.preprocessing,
            input_size=(crop, crop),
            decoding=DecodeSettings(**info.decoding) if info.decoding else None,
            calibrator=Calibrator.from_dict(info.calibrator) if info.calibrator else None,
            device=chosen,
            channels_last=chosen.type == "cuda" if channels_last is None else channels_last,
        )  # fmt: skip

    def load(self) -> ShowTellCaptioner:
        """The captioner, built from the file, which must still be the one that was read."""
        return load_exactly(self.source, self.identity, device=self.device,
                            channels_last=self.channels_last)  # fmt: skip


def load_exactly(
    path: str | Path, identity: str, *, device: str | torch.device = "auto",
    channels_last: bool | None = None,
) -> ShowTellCaptioner:  # fmt: skip
    """The captioner in `path`, provided its content hash is still `identity`: a file replaced
    since a run began is an error, not another model's drafts under this one's name."""
    captioner = ShowTellCaptioner.from_checkpoint(path, device=device, channels_last=channels_last)
    if captioner.identity != identity:
        raise ModelError(
            f"{path} changed while the run was captioning with it (its content hash is no "
            f"longer {identity[:12]}); run the command again"
        )
    return captioner
