"""Enumerate the files under the folders a user gives to `labeler scan`.

Paths stay `bytes` from the first `os.scandir` to the store, so a name that is not valid UTF-8 is
never mangled. The walk is a generator over `os.scandir` (it never lists a whole tree in memory)
and it reports what it passes over, so a scan can account for every file.

Symbolic links are not followed unless asked; when they are, each real folder is entered once
(keyed by device and inode), so a link pointing back up the tree cannot loop. A link that cannot
be resolved (broken, or a loop of links) is still yielded, and the probe gives it a status.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Found:
    """A file to probe: its absolute and root-relative paths, and its stat when it has one."""

    path: bytes
    rel: bytes  # relative to the root, '/'-separated
    size: int | None
    mtime_ns: int | None


@dataclass
class WalkStats:
    """What the walk passed over, by reason (hidden, excluded, symlink, special, unlistable)."""

    skipped: Counter[str] = field(default_factory=Counter)


def display(raw: bytes) -> str:
    """Readable text for a raw path; bytes that are not UTF-8 show as backslash escapes."""
    return raw.decode("utf-8", errors="backslashreplace")


def _matches(rel: bytes, patterns: Sequence[str]) -> bool:
    text = os.fsdecode(rel)
    name = text.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(text, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def walk(
    root: bytes,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    hidden: bool = False,
    follow_symlinks: bool = False,
    prefix: bytes = b"",
    stats: WalkStats | None = None,
) -> Iterator[Found]:
    """Yield every regular file under `root` (or `root` itself when it is a file).

    `prefix` is prepended to every relative path: where `root` lies inside the dataset's root.
    """
    stats = stats if stats is not None else WalkStats()
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        st = os.stat(root)
        yield Found(root, prefix + os.path.basename(root), st.st_size, st.st_mtime_ns)
        return
    seen_dirs: set[tuple[int, int]] = set()
    st = os.stat(root)
    seen_dirs.add((st.st_dev, st.st_ino))
    pending: list[tuple[bytes, bytes]] = [(root, prefix)]
    while pending:
        folder, prefix = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            stats.skipped["unlistable folder"] += 1
            continue
        subfolders = []
        for entry in entries:
            rel = prefix + entry.name
            found = _visit(entry, rel, include, exclude, hidden, follow_symlinks, seen_dirs, stats)
            if found is True:
                subfolders.append((entry.path, rel + b"/"))
            elif found is not None:
                yield found
        pending.extend(reversed(subfolders))  # depth first, in name order


def _visit(entry, rel, include, exclude, hidden, follow, seen_dirs, stats):  # type: ignore[no-untyped-def]
    """A Found for a file, True for a folder to enter, None for something passed over."""
    if not hidden and entry.name.startswith(b"."):
        stats.skipped["hidden"] += 1
        return None
    if exclude and _matches(rel, exclude):
        stats.skipped["excluded"] += 1
        return None
    is_link = entry.is_symlink()
    if is_link and not follow:
        stats.skipped["symbolic link"] += 1
        return None
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError:
        # A broken link or a loop of links: yield it, the probe says what is wrong.
        return Found(entry.path, rel, None, None) if _included(rel, include) else None
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            stats.skipped["folder already visited (link loop)"] += 1
            return None
        seen_dirs.add(key)
        return True
    if not stat.S_ISREG(st.st_mode):
        stats.skipped["not a regular file"] += 1
        return None
    if not _included(rel, include):
        stats.skipped["not included"] += 1
        return None
    return Found(entry.path, rel, st.st_size, st.st_mtime_ns)


def _included(rel: bytes, include: Sequence[str]) -> bool:
    return not include or _matches(rel, include)
