"""Atomic file output: a reader of the destination sees the old file or the whole new one.

Each output is written to a temporary file in the destination's own folder (so the final
rename never crosses file systems), flushed and fsynced, then renamed over the destination.
Without `force` the rename is a hard link, which fails if the destination appeared meanwhile,
so an existing file is never replaced even by a race. If anything raises before the rename,
the temporary file is removed and the destination is untouched.

Several outputs that belong together (tasks and their labeling config, COCO results and
ground truth) are written by `atomic_outputs`: every destination is checked before anything
is written, every temporary file is complete and fsynced before the first rename, and the
renames then follow one another. A crash between two renames can leave the first file new and
the second old; renames cannot be made atomic across files, and this window is milliseconds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from labeler.errors import InputError

BUFFER_SIZE = 1 << 20  # large writes: a million rows should not cost a million syscalls


def check_destination(dest: Path, *, force: bool) -> None:
    """Refuse a destination that is a folder, has no folder, or exists without `force`."""
    if dest.is_dir():
        raise InputError(f"{dest} is a folder; give a file name")
    if not dest.parent.is_dir():
        raise InputError(f"folder {dest.parent} does not exist")
    if dest.exists() and not force:
        raise InputError(f"{dest} already exists; use --force to overwrite it")


class AtomicFile:
    """A temporary file beside `dest` that becomes `dest` on `commit`, or vanishes on `discard`."""

    def __init__(
        self,
        dest: Path,
        *,
        force: bool,
        encoding: str = "utf-8",
        newline=None,
        durable: bool = True,
    ):
        self.dest = dest
        self.force = force
        self.durable = durable
        self.tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        # O_EXCL with 0o666 lets the umask decide the permissions, as for any ordinary file
        # (mkstemp would leave the export readable by its owner only).
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            # errors="replace": a file name that is not valid Unicode (kept by the scan as
            # surrogate escapes) must not abort the export; the output stays valid UTF-8.
            self.handle: TextIO = open(  # noqa: SIM115 - closed in close()/discard()
                fd,
                "w",
                encoding=encoding,
                errors="replace",
                newline=newline,
                buffering=BUFFER_SIZE,
            )
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise

    def close(self) -> None:
        """Flush and, when durable, fsync, so the rename never exposes a half-written file."""
        if self.handle.closed:
            return
        self.handle.flush()
        if self.durable:
            os.fsync(self.handle.fileno())
        self.handle.close()

    def commit(self) -> None:
        self.close()
        try:
            if self.force:
                os.replace(self.tmp, self.dest)
            else:
                self._link_exclusive()
        except InputError:
            self.discard()
            raise
        except OSError as exc:
            self.discard()
            raise InputError(f"cannot write {self.dest}: {exc.strerror or exc}") from None
        if self.durable:
            _fsync_folder(self.dest.parent)

    def _link_exclusive(self) -> None:
        exists = InputError(f"{self.dest} already exists; use --force to overwrite it")
        try:
            os.link(self.tmp, self.dest)
        except FileExistsError:
            raise exists from None
        except OSError as exc:
            # File systems without hard links (FAT, some network mounts): check, then rename.
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise
            if self.dest.exists():
                raise exists from None
            os.replace(self.tmp, self.dest)
            return
        os.unlink(self.tmp)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not every platform can open a folder, hence best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_outputs(
    dests: Sequence[Path], *, force: bool = False, encoding: str = "utf-8", newline=None
) -> Iterator[list[TextIO]]:
    """Open one text handle per destination; all are renamed into place if the block succeeds."""
    if len({Path(os.path.abspath(d)) for d in dests}) < len(dests):
        raise InputError(f"the same file is given twice: {', '.join(map(str, dests))}")
    for dest in dests:
        check_destination(dest, force=force)
    files: list[AtomicFile] = []
    try:
        for dest in dests:
            files.append(AtomicFile(dest, force=force, encoding=encoding, newline=newline))
        yield [f.handle for f in files]
        for f in files:
            f.close()
    except BaseException:
        for f in files:
            f.discard()
        raise
    for index, f in enumerate(files):
        try:
            f.commit()
        except BaseException:
            for rest in files[index + 1 :]:
                rest.discard()
            raise


@contextmanager
def atomic_output(
    dest: Path, *, force: bool = False, encoding: str = "utf-8", newline=None
) -> Iterator[TextIO]:
    """A single atomic text output: see the module docstring."""
    with atomic_outputs([dest], force=force, encoding=encoding, newline=newline) as (handle,):
        yield handle
