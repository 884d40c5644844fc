"""`labeler report`: a self-contained HTML gallery of the drafts, split into pages.

`report.html` (the index) holds the summary, the charts and a table of pages; the pages live
beside it in `report_files/page-0001.html`, ..., `per_page` drafts each in the export sort order
(worst p_accept first by default), each linking to the previous and next page and the index.
A page needs nothing outside itself: thumbnails are JPEG data URIs, charts are inline SVG, the
stylesheet is inline, there is no script, and a Content-Security-Policy forbids fetching anything,
so the report opens offline and a caption cannot smuggle in active content. Every string from the
store (paths, dataset, model and reviewer names, captions) goes through `html.escape(quote=True)`.

Streaming: drafts arrive from `iter_drafts` in order; a page's thumbnails are made in a process
pool (JPEG draft mode decodes straight to about thumbnail size) while earlier pages are written,
and a page is written once the next one exists or the drafts ran out (so its 'next' link is
right). Only the pages in flight are in memory, whatever the size of the dataset. An image that
no longer decodes gets a placeholder naming the reason, counted by status; the report goes on.

The charts come from `compute_stats` over everything the filter selects (`limit` only shortens
the gallery), so they show the numbers `labeler stats` shows; a card shows the review that
counts for its draft (store/drafts.py, `latest_review`), so a draft re-made with other text
shows as unreviewed there and in the charts alike.

Atomicity across many files: each page is written through `AtomicFile` (fsynced) into a hidden
staging folder beside the destination, and the index to its own temporary file; then the folder
is renamed into place and the index after it, so the index never links to a missing page. A
failure before that leaves the old report as it was and no staging folder. An existing report
(index or folder) is replaced only with `force`: the old folder is moved aside, and deleted once
the new index is in place. Between the two renames a reader may see the old index over the new
pages for a moment; no rename spans two paths.

A report killed midway (kill -9) leaves its staging folder, and one killed while publishing the
folder it moved aside. Each holds a lock on its staging and old folders while it lives
(labeler/atomic.py), so the next report to the same place removes those of dead reports, never
those of one running now, and reports how many and their size.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from html import escape
from pathlib import Path
from urllib.parse import quote

from labeler.atomic import (
    AtomicFile,
    check_destination,
    create_locked,
    lock_folder,
    remove_leftovers,
    temporary_name,
)
from labeler.errors import InputError
from labeler.files import decode
from labeler.pools import worker_pool
from labeler.records import ExportRow
from labeler.review import report_html
from labeler.review.report_html import ReportResult, WrittenPage
from labeler.review.stats import compute_stats
from labeler.store import Store
from labeler.store.drafts import DEFAULT_SORT, SORTS, DraftFilter, iter_drafts

PER_PAGE = 200  # ~1 MB of thumbnails: a page opens at once, and 100,000 drafts are 500 pages
THUMB_SIZE = 160  # the longer side, in pixels
THUMB_QUALITY = 70  # ~3.5 KB per 160x120 thumbnail; artefacts invisible at this size
THUMB_TASK = 16  # images per pool task: amortises the round trip without starving the pool


@dataclass
class ReportProgress:
    done: int  # drafts written to pages
    total: int  # drafts the report will hold (from the stats pass)
    placeholders: int  # images shown without a thumbnail so far


@dataclass
class _Page:
    number: int
    rows: list[ExportRow]
    thumbs: list[Future[list[tuple[str, str]]]]  # one per THUMB_TASK rows, in order


def write_report(
    store: Store,
    dest: Path,
    *,
    spec: DraftFilter = DraftFilter(),
    sort: str = DEFAULT_SORT,
    n_best: int = 3,
    per_page: int = PER_PAGE,
    thumb_size: int = THUMB_SIZE,
    bins: int = 10,
    workers: int | None = None,
    force: bool = False,
    progress: Callable[[ReportProgress], None] | None = None,
) -> ReportResult:
    """Write the gallery of the drafts `spec` selects: `dest` and the pages folder beside it.

    `n_best` counts the drafts shown per image, the best included; `thumb_size` 0 leaves the
    thumbnails out; `workers` 0 makes them in this process (None: one process per core).
    """
    started = time.perf_counter()
    dest = Path(dest)
    folder = dest.with_name(f"{dest.stem}_files")  # as browsers save a page with its files
    _check(dest, folder, sort, min(n_best, per_page), thumb_size, force)
    stats = compute_stats(store, spec=replace(spec, limit=None), bins=bins)
    total = stats.drafts if spec.limit is None else min(stats.drafts, spec.limit)
    result = ReportResult(index=dest, folder=folder)
    if progress is not None:
        progress(ReportProgress(0, total, 0))
    workers = 0 if not thumb_size else (os.cpu_count() or 1) if workers is None else workers
    removed = remove_leftovers(folder, kinds=("tmp", "old")) + remove_leftovers(dest)
    result.removed, result.removed_bytes = removed.count, removed.size
    staging, lock = create_locked(_make_folder, folder)
    try:
        writer = _PageWriter(staging, dest.name, thumb_size, result, total, progress)
        pool = worker_pool(workers, preload=["labeler.review.report"])
        with store.session() as session, pool:
            rows = iter_drafts(session, spec, sort=sort, n_best=n_best)
            # In flight: the page after the one being written, and two tasks for every worker.
            ahead = per_page + 2 * workers * THUMB_TASK
            pages = writer.write_all(_pages(rows, per_page, pool, thumb_size), ahead)
        index = report_html.index(stats, pages, result, folder.name, spec, sort)
        _publish(staging, folder, dest, index, force=force)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"cannot write the report {dest}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock)  # held while this report lives: its staging folder is not a leftover
    result.pages = [folder / report_html.page_name(p.number) for p in pages]
    result.elapsed_s = time.perf_counter() - started
    return result


def _make_folder(path: Path) -> int:
    os.mkdir(path)
    return os.open(path, os.O_RDONLY)


def _check(dest: Path, folder: Path, sort: str, least: int, thumb_size: int, force: bool) -> None:
    """Refuse bad options and existing outputs before any work."""
    if sort not in SORTS:
        raise InputError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    if least < 1:
        raise InputError("--n-best and --per-page must be at least 1")
    if thumb_size != 0 and not 16 <= thumb_size <= 1024:
        raise InputError("--thumb-size must be 0 (no thumbnails) or 16 to 1024 pixels")
    check_destination(dest, force=force)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is not a folder; the report's pages go there")
    if folder.exists() and not force:
        raise InputError(f"{folder} already exists; use --force to overwrite the report")


# Thumbnails -----------------------------------------------------------------------------------


def _thumbnails(paths: tuple[bytes, ...], size: int) -> list[tuple[str, str]]:
    """(base64 JPEG, "") for each path that decodes, else ("", "status: reason")."""
    out = []
    for path in paths:
        try:
            # (size, 1): draft mode needs only the width to reach `size` (the longer side of a
            # landscape photo, more than enough for a portrait one), so a 4:3 photo decodes
            # straight to 160x120; (size, size) would decode it to 320x240, twice the cost.
            image = decode.load_rgb(path, draft_size=(size, 1))
        except decode.ImageDecodeError as exc:
            out.append(("", f"{exc.status}: {exc.reason}"))
            continue
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=THUMB_QUALITY)
        out.append((base64.b64encode(buffer.getvalue()).decode("ascii"), ""))
    return out


def _pages(rows: Iterable[ExportRow], per_page: int, pool, size: int) -> Iterator[_Page]:  # type: ignore[no-untyped-def]
    """Rows grouped into pages, each page's thumbnails submitted as soon as it is complete."""
    page: list[ExportRow] = []
    number = 0
    for row in rows:
        page.append(row)
        if len(page) == per_page:
            number += 1
            yield _Page(number, page, _submit(pool, page, size))
            page = []
    if page:
        yield _Page(number + 1, page, _submit(pool, page, size))


def _submit(pool: Executor, rows: list[ExportRow], size: int) -> list[Future]:  # type: ignore[type-arg]
    # abs_path carries undecodable bytes as surrogate escapes; fsencode gives the file's bytes.
    paths = [os.fsencode(row.abs_path) for row in rows] if size else []
    tasks = [tuple(paths[i : i + THUMB_TASK]) for i in range(0, len(paths), THUMB_TASK)]
    return [pool.submit(_thumbnails, task, size) for task in tasks]


# Pages ----------------------------------------------------------------------------------------


class _PageWriter:
    """Writes the pages in order, a few behind the reader so that the pool always has work."""

    def __init__(self, staging, index_name, thumb_size, result, total, progress) -> None:  # type: ignore[no-untyped-def]
        self.staging = staging
        self.index_href = escape("../" + quote(index_name))
        self.thumb_size = thumb_size
        self.result = result
        self.total = total
        self.progress = progress

    def write_all(self, pages: Iterator[_Page], ahead_rows: int) -> list[WrittenPage]:
        ahead: deque[_Page] = deque()
        done: list[WrittenPage] = []
        for page in pages:
            ahead.append(page)
            while len(ahead) > 1 and sum(len(p.rows) for p in ahead) > ahead_rows:
                done.append(self._write(ahead.popleft(), has_next=True))
        while ahead:
            done.append(self._write(ahead.popleft(), has_next=bool(ahead)))
        return done

    def _write(self, page: _Page, *, has_next: bool) -> WrittenPage:
        thumbs = [t for future in page.thumbs for t in future.result()]
        cards = []
        for row, (data, why) in zip(page.rows, thumbs or [("", "")] * len(page.rows), strict=True):
            self.result.thumbnails += bool(data)
            if why:
                self.result.placeholders[why.split(":", 1)[0]] += 1
            cards.append(report_html.card(row, data, why, self.thumb_size))
        first, self.result.drafts = self.result.drafts + 1, self.result.drafts + len(page.rows)
        nav = report_html.nav(page.number, has_next, self.index_href)
        title = f"Drafts {first}&ndash;{self.result.drafts}"
        body = f"{nav}<h1>{title}</h1>\n<main>\n{''.join(cards)}</main>\n{nav}"
        file = AtomicFile(self.staging / report_html.page_name(page.number), force=False)
        try:
            file.handle.write(report_html.document(title, body))
            file.commit()
        except BaseException:
            file.discard()
            raise
        if self.progress is not None:
            missing = sum(self.result.placeholders.values())
            self.progress(ReportProgress(self.result.drafts, self.total, missing))
        return WrittenPage(page.number, len(page.rows), page.rows[0].p_accept,
                           page.rows[-1].p_accept)  # fmt: skip


# The index ------------------------------------------------------------------------------------


# Publishing -----------------------------------------------------------------------------------


def _publish(staging: Path, folder: Path, dest: Path, index: str, *, force: bool) -> None:
    """The index to a temporary file, the folder swapped in, the index renamed (module
    docstring). Each page's commit fsynced the staging folder; the index's fsyncs the parent."""
    file = AtomicFile(dest, force=force)
    old: Path | None = None
    lock = -1  # on the old folder, so that another report never takes it for a leftover
    try:
        file.handle.write(index)
        file.close()
        if folder.exists():
            old, lock = temporary_name(folder, "old"), lock_folder(folder)
            os.replace(folder, old)
        os.replace(staging, folder)
        file.commit()
    except BaseException:
        file.discard()
        if not staging.exists() and folder.exists():
            os.replace(folder, staging)  # the caller removes the staging folder
        if old is not None:
            os.replace(old, folder)
        raise
    else:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if lock >= 0:
            os.close(lock)
