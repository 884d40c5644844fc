"""Atomic file output: a reader of the destination sees the old file or the whole new one.

Each output is written to a temporary file in the destination's own folder (so the final
rename never crosses file systems), flushed and fsynced, then renamed over the destination.
Without `force` the rename is a hard link, which fails if the destination appeared meanwhile,
so an existing file is never replaced even by a race. If anything raises before the rename,
the temporary file is removed and the destination is untouched.

Every file the project writes whole goes through here: exports, reports, checkpoints, feature
shards and generated data sets (`atomic_binary` for bytes).

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
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from labeler.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so leftovers are never judged dead
    fcntl = None  # type: ignore[assignment]

BUFFER_SIZE = 1 << 20  # large writes: a million rows should not cost a million syscalls
ATTEMPTS = 5  # fresh names to try when a cleaner took a new temporary file before its lock


@dataclass(frozen=True)
class Removed:
    """Leftovers of dead writers that `remove_leftovers` deleted, and the bytes they held."""

    count: int = 0
    size: int = 0

    def __add__(self, other: Removed) -> Removed:
        return Removed(self.count + other.count, self.size + other.size)


def temporary_name(dest: Path, kind: str = "tmp") -> Path:
    """`.NAME.<8 hex>.tmp` beside `dest`: hidden, and matched by `remove_leftovers`."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.{kind}")


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False if another process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        # Any other error: a file system without locks, where the writer goes on unprotected.
        return exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    return True


def _names(fd: int, path: Path) -> bool:
    """Whether `path` is still the file or folder open as `fd` (not removed or replaced)."""
    try:
        now, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def create_locked(make: Callable[[Path], int], dest: Path, kind: str = "tmp") -> tuple[Path, int]:
    """A new temporary entry beside `dest` made by `make(path) -> fd`, locked by this process.

    Between creating and locking, a cleaner may take the lock of the unlocked newcomer and remove
    it; then the name no longer leads to our file and we start again under a fresh name.
    """
    for _ in range(ATTEMPTS):
        path = temporary_name(dest, kind)
        fd = make(path)
        if _try_lock(fd) and _names(fd, path):
            return path, fd
        os.close(fd)
    raise InputError(f"cannot create a temporary file beside {dest}: it keeps disappearing")


def lock_folder(folder: Path) -> int:
    """Open `folder` and lock it; the caller closes the descriptor to release it."""
    fd = os.open(folder, os.O_RDONLY)
    _try_lock(fd)
    return fd


def _size(path: Path) -> int:
    """Bytes held by a file, or by everything under a folder (links not followed)."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def remove_leftovers(dest: Path, kinds: Sequence[str] = ("tmp",)) -> Removed:
    """Remove the temporary files and folders of dead writers to `dest` (`.NAME.<hex>.tmp`).

    An entry is a leftover when its lock can be taken: its writer is gone. A live writer holds
    its lock, so its entry is left alone. Without `fcntl` nothing is removed.
    """
    if fcntl is None or not dest.parent.is_dir():
        return Removed()
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.[0-9a-f]{{8}}\.(?:{'|'.join(kinds)})")
    removed = Removed()
    for entry in os.scandir(dest.parent):
        if pattern.fullmatch(entry.name):
            removed += _remove_if_dead(Path(entry.path))
    return removed


def _remove_if_dead(path: Path) -> Removed:
    try:  # O_NOFOLLOW: a planted link is never followed; O_NONBLOCK: nor a fifo waited on
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return Removed()
    try:
        assert fcntl is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return Removed()  # a live writer (or a file system without locks): keep it
        if not _names(fd, path):
            return Removed()  # another cleaner got there first
        size = _size(path)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return Removed(1, size)
    except OSError:
        return Removed()
    finally:
        os.close(fd)


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
        binary: bool = False,
    ):
        self.dest = dest
        self.force = force
        self.durable = durable
        # O_EXCL with 0o666 lets the umask decide the permissions, as for any ordinary file
        # (mkstemp would leave the export readable by its owner only).
        self.tmp, fd = create_locked(
            lambda path: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), dest
        )
        # The lock belongs to the open file, which this duplicate keeps open after the handle
        # is closed, so the temporary file stays claimed until it is renamed or removed.
        self._lock = os.dup(fd)
        try:
            # errors="replace": a file name that is not valid Unicode (kept by the scan as
            # surrogate escapes) must not abort the export; the output stays valid UTF-8.
            if binary:  # checkpoints, feature shards: torch.save writes bytes
                self.handle: Any = open(fd, "wb", buffering=BUFFER_SIZE)  # noqa: SIM115
            else:
                self.handle = open(  # noqa: SIM115 - closed in close()/discard()
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
            self._release()
            raise

    def _release(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1

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
        self._release()
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
        self._release()


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


@contextmanager
def atomic_binary(dest: Path, *, force: bool = True) -> Iterator[AtomicFile]:
    """A single atomic binary output (checkpoints, feature shards, a generated data set's
    JSON): the AtomicFile, whose `handle` takes the bytes and whose `tmp` may be read before
    the rename. Replaces an existing file unless `force` is False."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    output = AtomicFile(dest, force=force, binary=True)
    try:
        yield output
    except BaseException:
        output.discard()
        raise
    output.commit()
