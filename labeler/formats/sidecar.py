"""Sidecar captions for diffusion trainers: `img.jpg` + `img.txt` (or `img.caption`).

One UTF-8 file per image holding one line: the caption to train on (the reviewer's text when
the draft was edited, else the draft), whitespace collapsed so a newline in a caption cannot
split it. No trailing newline: some trainers read the whole file as the prompt. An image whose
draft a reviewer rejected gets no sidecar (a trainer would learn the caption judged wrong); it
is counted as `rejected`, and a sidecar already there is left as it is.

Sidecars go next to each image, or under an output folder that mirrors the images' paths
relative to their dataset root. Each file is atomic on its own (temporary file, rename), and an
existing sidecar is kept unless `force`: hand-written captions are precious, so they are counted
as skipped rather than refused. Two rows that map to one sidecar in the same export (`a.jpg`
and `a.png`; the same image drafted by two models) are counted as conflicts and only the first
is written. Remembering which sidecars this export wrote costs one path per image of memory.

A million tiny files cannot afford an fsync each; instead each is renamed into place without
one and the file system is synced once at the end (`os.sync`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from labeler.atomic import AtomicFile
from labeler.errors import InputError
from labeler.records import ExportResult, ExportRow, normalise_text

EXTENSIONS = (".txt", ".caption")


def sidecar_path(row: ExportRow, extension: str, out_dir: Path | None) -> Path:
    """Where the row's sidecar goes: beside the image, or mirrored under `out_dir`."""
    if out_dir is None:
        return Path(row.abs_path).with_suffix(extension)
    relative = PurePosixPath(row.path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise InputError(f"image path {row.path!r} (id {row.image_id}) is not a relative path")
    return out_dir.joinpath(*relative.parts).with_suffix(extension)


def _extension(extension: str) -> str:
    extension = extension if extension.startswith(".") else f".{extension}"
    if extension not in EXTENSIONS:
        # Anything else could be an image's own extension, and --force would overwrite images.
        raise InputError(f"sidecar extension must be one of {', '.join(EXTENSIONS)}")
    return extension


def _write_one(target: Path, text: str, *, force: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    sidecar = AtomicFile(target, force=force, durable=False)
    try:
        sidecar.handle.write(text)
    except BaseException:
        sidecar.discard()
        raise
    sidecar.commit()


def write_sidecar(
    rows: Iterable[ExportRow],
    dest: Path | None = None,
    *,
    force: bool = False,
    extension: str = ".txt",
) -> ExportResult:
    """Write one sidecar per image; `dest` is the mirror folder, None for beside the images."""
    extension = _extension(extension)
    written: set[str] = set()
    result = ExportResult(count=0, paths=[dest] if dest is not None else [])
    try:
        for row in rows:
            if row.review_outcome == "rejected":
                result.rejected += 1
                continue
            target = sidecar_path(row, extension, dest)
            key = str(target)
            if key in written:
                result.conflicts += 1
                continue
            if not force and target.exists():
                result.skipped += 1
                continue
            try:
                _write_one(target, normalise_text(row.final_text), force=force)
            except OSError as exc:
                raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
            written.add(key)
            result.count += 1
    finally:
        if written and hasattr(os, "sync"):
            os.sync()
    return result
