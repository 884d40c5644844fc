"""Self-describing checkpoints: one file that says exactly which model it is.

The file is a `torch.save` of plain containers and tensors only:

    {"format": "labeler.show_tell", "format_version": 1, "labeler_version": "0.1.0",
     "config": ModelConfig.to_dict() (preprocessing included), "vocab": Vocabulary.to_dict(),
     "training": {...plain metadata: data, epochs, validation loss, metrics...},
     "decoding": DecodeSettings.to_dict() the model is meant to be decoded with, or absent,
     "calibrator": Calibrator.to_dict() fitted on its validation drafts, or absent,
     "state_dict": the model's weights, frozen backbone included}

The decoding defaults and the calibrator are optional keys: a file without them (an older
labeler's) loads with both None, and an older labeler ignores them.

so `torch.load(weights_only=True)` can read it and loading never executes code from the file.
The model's identity in the store is the sha256 of the file's bytes. `torch.save` is given an open
file rather than a path, because with a path it names the archive's records after the file, and
the same model saved under two names would get two identities.

Saving is atomic (a temporary file in the same folder, fsynced, then `os.replace`), so a killed
run leaves either the old checkpoint or the new one, never half of one.

`read_checkpoint_info` reads and checks everything but the weights, which `torch.load(mmap=True)`
maps from the file without reading them, and builds no network: what a process needs that
records which model runs (its hash, settings, calibrator, preprocessing) while other processes
run it. It costs what loading costs but the weights: the hash and the archive check read the
file through (none of it stays resident) and torch is imported. Loading the dict without mmap
would hold a copy of the weights; building the model, which takes them over, no further copy.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from labeler import __version__
from labeler.atomic import atomic_binary
from labeler.errors import ModelError
from labeler.model.preprocessing import Preprocessing
from labeler.model.show_tell import ModelConfig, ShowAndTell
from labeler.model.vocab import Vocabulary

FORMAT = "labeler.show_tell"
FORMAT_VERSION = 1  # bump on any change that an older labeler could not read
_PLAIN = (str, int, float, bool, type(None))


@dataclass
class CheckpointInfo:
    """What a checkpoint says about its model, without the network (`read_checkpoint_info`)."""

    vocab: Vocabulary
    config: ModelConfig
    preprocessing: Preprocessing
    training: dict  # the metadata given to save_checkpoint, as saved
    # The decoding settings the model was validated with (DecodeSettings.to_dict()), or None.
    decoding: dict | None
    # The calibrator fitted on its validation drafts (Calibrator.to_dict()), or None.
    calibrator: dict | None
    format_version: int
    content_hash: str  # sha256 hex of the file's bytes: the model's identity
    path: Path


@dataclass
class LoadedCheckpoint(CheckpointInfo):
    model: ShowAndTell  # in eval mode, on map_location


def save_checkpoint(
    path: str | Path,
    model: ShowAndTell,
    vocab: Vocabulary,
    *,
    training: dict,
    decoding: dict | None = None,
    calibrator: dict | None = None,
) -> str:
    """Write the model atomically; returns the content hash (sha256 hex of the bytes written)."""
    path = Path(path)
    if len(vocab) != model.config.vocab_size:
        raise ModelError(
            f"vocabulary has {len(vocab)} words, the model expects {model.config.vocab_size}"
        )
    _check_plain(training, "training")
    _check_plain(decoding, "decoding")
    _check_plain(calibrator, "calibrator")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "labeler_version": __version__,
        "config": model.config.to_dict(),
        "vocab": vocab.to_dict(),
        "training": training,
        **({"decoding": decoding} if decoding is not None else {}),
        **({"calibrator": calibrator} if calibrator is not None else {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(payload: dict, path: Path) -> str:
    """torch.save to a temporary file beside `path`, fsync, rename; returns the sha256 hex of
    the bytes. A crash at any point leaves the previous file whole."""
    with atomic_binary(path) as output:
        torch.save(payload, output.handle)
        output.close()  # flushed and fsynced: the digest is of the bytes the rename exposes
        digest = file_sha256(output.tmp)
    return digest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Read and check a checkpoint; any unreadable or foreign file raises ModelError."""
    info, state_dict = _read(Path(path), map_location=map_location, mmap=False)
    model = _build(info.config, state_dict, info.path)
    model.to(map_location)
    return LoadedCheckpoint(**vars(info), model=model.eval())


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """A checkpoint's identity and metadata, checked as `load_checkpoint` checks them, without
    its weights in memory: they are mapped from the file, never read, and the network is never
    built (a process that only records which model runs elsewhere needs no copy of it). The
    weights' match with the config is checked only when the model is loaded."""
    info, _weights = _read(Path(path), map_location="cpu", mmap=True)
    return info


def _read(
    path: Path, *, map_location: str | torch.device, mmap: bool
) -> tuple[CheckpointInfo, dict]:
    """The file's metadata and its state dict (mapped, not read, with `mmap`)."""
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    digest = file_sha256(path)
    _check_archive(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable checkpoint: {_first_line(exc)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(
            f"{path} is not a labeler checkpoint (a plain PyTorch state dict or another tool's "
            f"file?); train one with labeler or convert it"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"{path} has checkpoint format version {version!r}, newer than this labeler reads "
            f"(up to {FORMAT_VERSION}); upgrade labeler"
        )
    try:
        config = ModelConfig.from_dict(data["config"])
        vocab = Vocabulary.from_dict(data["vocab"])
        state_dict = data["state_dict"]
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path} is incomplete: {_first_line(exc)}") from None
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    if len(vocab) != config.vocab_size:
        raise ModelError(
            f"{path} is inconsistent: {len(vocab)} words, config says {config.vocab_size}"
        )
    info = CheckpointInfo(
        vocab=vocab,
        config=config,
        preprocessing=config.preprocessing,
        training=data.get("training") or {},
        decoding=data.get("decoding"),
        calibrator=data.get("calibrator"),
        format_version=version,
        content_hash=digest,
        path=path,
    )
    return info, state_dict


def _check_archive(path: Path) -> None:
    """torch.save writes a zip with a CRC-32 per record but torch.load never checks them, so a
    flipped byte in the weights would load silently; zipfile checks every record."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelError(
            f"{path} is not a readable checkpoint (truncated or not one): {exc}"
        ) from None
    if bad is not None:
        raise ModelError(f"{path} is corrupt: its record {bad} fails its checksum")


def _build(config: ModelConfig, state_dict, path: Path) -> ShowAndTell:
    """The model with the saved weights, built on the meta device: nothing is initialised twice."""
    with torch.device("meta"):
        model = ShowAndTell(config)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path} weights do not match its config: {_first_line(exc)}") from None
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ModelError(f"{path} weights do not match its config: no values for {leftover[:3]}")
    return model


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_plain(value, where: str) -> None:
    """Training metadata must load under weights_only: plain containers and scalars only."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelError(f"{where} keys must be strings, got {k!r}")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise ModelError(
            f"{where} must hold only str, int, float, bool, None, lists and dicts; "
            f"got {type(value).__name__}"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
