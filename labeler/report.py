"""`labeler report`: a self-contained HTML gallery of the drafts, split into pages.

`report.html` (the index) holds the summary, the charts and a table of pages; the pages live
beside it in `report_files/page-0001.html`, ..., `per_page` drafts each in the export sort order
(worst confidence first by default), each linking to the previous and next page and the index.
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
the gallery), so they show the numbers `labeler stats` shows.

Atomicity across many files: each page is written through `AtomicFile` (fsynced) into a hidden
staging folder beside the destination, and the index to its own temporary file; then the folder
is renamed into place and the index after it, so the index never links to a missing page. A
failure before that leaves the old report as it was and no staging folder. An existing report
(index or folder) is replaced only with `force`: the old folder is moved aside, and deleted once
the new index is in place. Between the two renames a reader may see the old index over the new
pages for a moment; no rename spans two paths.
"""

from __future__ import annotations

import base64
import io
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from urllib.parse import quote

from labeler import imageio
from labeler.errors import InputError
from labeler.formats.atomic import AtomicFile, check_destination
from labeler.formats.rows import END_TOKEN, ExportRow
from labeler.stats import Stats, compute_stats
from labeler.store import Store
from labeler.store.exports import SORTS, DraftFilter, iter_drafts

PER_PAGE = 200  # ~1 MB of thumbnails: a page opens at once, and 100,000 drafts are 500 pages
THUMB_SIZE = 160  # the longer side, in pixels
THUMB_QUALITY = 70  # ~3.5 KB per 160x120 thumbnail; artefacts invisible at this size
THUMB_TASK = 16  # images per pool task: amortises the round trip without starving the pool
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass
class ReportProgress:
    done: int  # drafts written to pages
    total: int  # drafts the report will hold (from the stats pass)
    placeholders: int  # images shown without a thumbnail so far


@dataclass
class ReportResult:
    index: Path
    folder: Path
    pages: list[Path] = field(default_factory=list)
    drafts: int = 0
    thumbnails: int = 0
    placeholders: Counter[str] = field(default_factory=Counter)  # by status: "missing", ...
    elapsed_s: float = 0.0


@dataclass
class _Page:
    number: int
    rows: list[ExportRow]
    thumbs: list[Future[list[tuple[str, str]]]]  # one per THUMB_TASK rows, in order


@dataclass(frozen=True)
class _Written:
    """What the index needs of a written page; its rows are let go, so memory stays flat."""

    number: int
    drafts: int
    first: float  # confidence of its first and last draft
    last: float


def write_report(
    store: Store,
    dest: Path,
    *,
    spec: DraftFilter = DraftFilter(),
    sort: str = "confidence",
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
    _check(dest, folder, sort, min(n_best, per_page, bins), thumb_size, force)
    stats = compute_stats(store, spec=replace(spec, limit=None), bins=bins)
    total = stats.drafts if spec.limit is None else min(stats.drafts, spec.limit)
    result = ReportResult(index=dest, folder=folder)
    if progress is not None:
        progress(ReportProgress(0, total, 0))
    workers = 0 if not thumb_size else (os.cpu_count() or 1) if workers is None else workers
    staging = dest.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
    try:
        staging.mkdir()
        writer = _PageWriter(staging, dest.name, thumb_size, result, total, progress)
        with store.session() as session, _pool(workers) as pool:
            rows = iter_drafts(session, spec, sort=sort, n_best=n_best)
            # In flight: the page after the one being written, and two tasks for every worker.
            ahead = per_page + 2 * workers * THUMB_TASK
            pages = writer.write_all(_pages(rows, per_page, pool, thumb_size), ahead)
        _publish(staging, folder, dest, _index(stats, pages, result, folder.name, spec, sort),
                 force=force)  # fmt: skip
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"cannot write the report {dest}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.pages = [folder / _page_name(p.number) for p in pages]
    result.elapsed_s = time.perf_counter() - started
    return result


def _check(dest: Path, folder: Path, sort: str, least: int, thumb_size: int, force: bool) -> None:
    """Refuse bad options and existing outputs before any work."""
    if sort not in SORTS:
        raise InputError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    if least < 1:
        raise InputError("--n-best, --per-page and --bins must be at least 1")
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
            image = imageio.load_rgb(path, draft_size=(size, 1))
        except imageio.ImageDecodeError as exc:
            out.append(("", f"{exc.status}: {exc.reason}"))
            continue
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=THUMB_QUALITY)
        out.append((base64.b64encode(buffer.getvalue()).decode("ascii"), ""))
    return out


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool, or None for workers=0 (thumbnails made inline: tests, tiny reports)."""
    if workers == 0:
        yield None
        return
    # forkserver: never fork a process that may run a progress thread (a held lock is copied).
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["labeler.report"])  # workers start with it imported
    # Workers ignore Ctrl-C: the main process stops, and removes the staging folder.
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=signal.signal,
                               initargs=(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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


def _submit(pool: ProcessPoolExecutor | None, rows: list[ExportRow], size: int) -> list[Future]:  # type: ignore[type-arg]
    # abs_path carries undecodable bytes as surrogate escapes; fsencode gives the file's bytes.
    paths = [os.fsencode(row.abs_path) for row in rows] if size else []
    tasks = [tuple(paths[i : i + THUMB_TASK]) for i in range(0, len(paths), THUMB_TASK)]
    if pool is not None:
        return [pool.submit(_thumbnails, task, size) for task in tasks]
    done: list[Future] = [Future() for _ in tasks]  # type: ignore[type-arg]
    for future, task in zip(done, tasks, strict=True):
        future.set_result(_thumbnails(task, size))
    return done


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

    def write_all(self, pages: Iterator[_Page], ahead_rows: int) -> list[_Written]:
        ahead: deque[_Page] = deque()
        done: list[_Written] = []
        for page in pages:
            ahead.append(page)
            while len(ahead) > 1 and sum(len(p.rows) for p in ahead) > ahead_rows:
                done.append(self._write(ahead.popleft(), has_next=True))
        while ahead:
            done.append(self._write(ahead.popleft(), has_next=bool(ahead)))
        return done

    def _write(self, page: _Page, *, has_next: bool) -> _Written:
        thumbs = [t for future in page.thumbs for t in future.result()]
        cards = []
        for row, (data, why) in zip(page.rows, thumbs or [("", "")] * len(page.rows), strict=True):
            self.result.thumbnails += bool(data)
            if why:
                self.result.placeholders[why.split(":", 1)[0]] += 1
            cards.append(_card(row, data, why, self.thumb_size))
        first, self.result.drafts = self.result.drafts + 1, self.result.drafts + len(page.rows)
        nav = _nav(page.number, has_next, self.index_href)
        title = f"Drafts {first}&ndash;{self.result.drafts}"
        body = f"{nav}<h1>{title}</h1>\n<main>\n{''.join(cards)}</main>\n{nav}"
        file = AtomicFile(self.staging / _page_name(page.number), force=False)
        try:
            file.handle.write(_document(title, body))
            file.commit()
        except BaseException:
            file.discard()
            raise
        if self.progress is not None:
            missing = sum(self.result.placeholders.values())
            self.progress(ReportProgress(self.result.drafts, self.total, missing))
        return _Written(page.number, len(page.rows), page.rows[0].confidence,
                        page.rows[-1].confidence)  # fmt: skip


def _page_name(number: int) -> str:
    return f"page-{number:04d}.html"


def _nav(number: int, has_next: bool, index_href: str) -> str:
    links = [f'<a href="{_page_name(number - 1)}" rel="prev">&larr; previous</a>'] * (number > 1)
    links.append(f'<a href="{index_href}">index</a>')
    links += [f'<a href="{_page_name(number + 1)}" rel="next">next &rarr;</a>'] * has_next
    return f"<nav>{' '.join(links)} <span>page {number}</span></nav>\n"


def _card(row: ExportRow, thumb: str, why: str, thumb_size: int) -> str:
    where = escape(f"{row.dataset}/{row.path}")
    if thumb:
        image = f'<img src="data:image/jpeg;base64,{thumb}" alt="{where}">'
    else:  # the placeholder keeps the thumbnail's width so the cards stay aligned
        image = (f'<div class="thumb none" style="width:{thumb_size}px" title="{escape(why)}">'
                 f"no preview<br>{escape(why)}</div>" if thumb_size else "")  # fmt: skip
    flags = [("no end token", not row.finished), ("repeats", row.repeated_ngram),
             ("unknown words", row.has_unknown)]  # fmt: skip
    badges = "".join(f' <span class="flag">{name}</span>' for name, on in flags if on)
    return (
        f'<article class="draft" id="image-{row.image_id}" data-image-id="{row.image_id}" '
        f'data-confidence="{row.confidence:.6f}">{image}<div>\n'
        f'<p class="caption">{_marked_caption(row)}</p>\n'
        f'<p class="scores"><b>{row.confidence:.3f}</b> confidence &middot; log-likelihood '
        f"{row.log_likelihood:.2f} over {row.num_tokens} tokens &middot; margin "
        f"{_number(row.margin, 2)}{badges}"
        f"</p>\n{_alternatives(row)}{_review(row)}"
        f'<p class="path">{where} &middot; image {row.image_id}</p>\n</div></article>\n'
    )


def _marked_caption(row: ExportRow) -> str:
    words = [escape(w) for w in row.text.split()]
    index = row.least_certain_index
    if index is None:
        return " ".join(words)
    tip = f"least certain: p = {math.exp(row.token_logprobs[index]):.3f}"
    if index < len(words):
        words[index] = f'<mark title="{tip}">{words[index]}</mark>'
    else:
        words.append(f'<mark class="end" title="{tip}">{escape(END_TOKEN)}</mark>')
    return " ".join(words)


def _alternatives(row: ExportRow) -> str:
    items = [f"<li>{escape(a.text)} <small>{a.confidence:.3f}</small></li>"
             for a in row.alternatives]  # fmt: skip
    return f'<ol class="alternatives" start="2">{"".join(items)}</ol>\n' if items else ""


def _review(row: ExportRow) -> str:
    outcome = escape(row.review_outcome or "unreviewed")
    parts = [f'<span class="outcome {outcome}">{outcome}</span>']
    if row.review_text and row.review_text != row.text:
        parts.append(f'<q class="correction">{escape(row.review_text)}</q>')
    if row.reviewer:
        parts.append(f"by {escape(row.reviewer)}")
    if row.reviewed_at:
        parts.append(row.reviewed_at.strftime("%Y-%m-%d"))
    return f'<p class="review">{" ".join(parts)}</p>\n'


# The index ------------------------------------------------------------------------------------


def _index(stats: Stats, pages: list[_Written], result: ReportResult, folder: str,
           spec: DraftFilter, sort: str) -> str:  # fmt: skip
    href = escape(quote(folder))
    rows = [f'<tr><td><a href="{href}/{_page_name(p.number)}">page {p.number}</a></td>'
            f"<td>{p.drafts}</td><td>{p.first:.3f}</td><td>{p.last:.3f}</td></tr>\n"
            for p in pages]  # fmt: skip
    head = "<table><tr><th>page</th><th>drafts</th><th>first</th><th>last</th></tr>\n"
    listing = f"{head}{''.join(rows)}</table>" if pages else "<p>No drafts match this filter.</p>"
    title = f"Draft captions: {escape(stats.model)}"
    return _document(title, (
        f"<h1>{title}</h1>\n{_summary(stats, result, spec, sort)}\n"
        f"<h2>Confidence</h2>\n{_histogram(stats)}\n"
        f"<h2>Calibration against reviews</h2>\n{_calibration(stats)}\n"
        f"<h2>Pages</h2>\n<p>Confidence of the first and last draft of each page.</p>\n{listing}"
    ))  # fmt: skip


def _summary(stats: Stats, result: ReportResult, spec: DraftFilter, sort: str) -> str:
    chosen = [f"{f.name}={getattr(spec, f.name)!r}" for f in fields(spec)
              if getattr(spec, f.name) != f.default]  # fmt: skip
    missing = ", ".join(f"{n} {status}" for status, n in result.placeholders.most_common())
    items = {
        "model": f"{stats.model}, decoding settings {stats.settings_key}",
        "selection": "; ".join(chosen) or "every current draft",
        "sorted by": sort,
        "drafts": f"{result.drafts} shown of {stats.drafts} selected, {stats.flagged} flagged",
        "mean confidence": "-" if stats.mean_confidence is None else f"{stats.mean_confidence:.3f}",
        "reviews": ", ".join(f"{n} {o}" for o, n in stats.outcomes.most_common()) or "none yet",
        "thumbnails": f"{result.thumbnails}" + (f" (no preview: {missing})" if missing else ""),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{escape(v)}</dd>" for k, v in items.items()) + "</dl>"


def _histogram(stats: Stats) -> str:
    tips = [f"{b.low:.2f}-{b.high:.2f}: {n} drafts"
            for b, n in zip(stats.bands, stats.histogram, strict=True)]  # fmt: skip
    top = max(stats.histogram, default=0) or 1
    return _bars([float(n) for n in stats.histogram], top, tips, "{:,.0f}".format)


def _calibration(stats: Stats) -> str:
    bands = stats.bands
    if not any(b.reviewed for b in bands):
        return ('<p class="no-reviews">No reviews yet: import the reviewers\' corrections '
                "(<code>labeler import</code>) to see how often the drafts of each confidence "
                "band are accepted unchanged.</p>")  # fmt: skip
    tips = [f"{b.low:.2f}-{b.high:.2f}: {b.accepted} of {b.reviewed} accepted unchanged"
            for b in bands]  # fmt: skip
    chart = _bars([b.acceptance for b in bands], 1.0, tips, "{:.0%}".format,
                  [f"n={b.reviewed}" for b in bands], stats.threshold)  # fmt: skip
    lines = [f"<tr><td>{b.low:.2f}-{b.high:.2f}</td><td>{b.drafts}</td><td>{b.reviewed}</td>"
             f"<td>{_number(b.acceptance, 2)}</td><td>{_number(b.mean_edit_distance, 2)}</td>"
             f"<td>{_number(b.bleu, 3)}</td></tr>\n" for b in bands]  # fmt: skip
    note = f"AUROC of confidence for acceptance: {_number(stats.auroc, 3)}. "
    if stats.threshold is None:
        note += f"No threshold reaches {stats.target:.0%}."
    else:
        note += (f"Drafts at or above {stats.threshold:.3f} (the dashed line) were accepted "
                 f"unchanged at least {stats.target:.0%} of the time; {stats.passed} drafts are "
                 "that confident.")  # fmt: skip
    return (f"{chart}\n<p>{note}</p>\n<table><tr><th>confidence</th><th>drafts</th>"
            "<th>reviewed</th><th>accepted</th><th>word edits</th><th>BLEU-4</th></tr>\n"
            f"{''.join(lines)}</table>")  # fmt: skip


def _bars(values: list[float | None], top: float, tips: list[str], label: Callable[[float], str],
          notes: list[str] | None = None, marker: float | None = None) -> str:  # fmt: skip
    """An SVG bar chart over the confidence range [0, 1], a bar per band (None: none) with a
    tooltip, an optional note above each bar and an optional dashed line at `marker`."""
    width, height, left, bottom, pad = 640, 200, 48, 24, 14
    plot_w, plot_h = width - left - pad, height - bottom - pad
    step, base = plot_w / len(values), pad + plot_h
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           'font-size="11" fill="#555">']  # fmt: skip
    for i, (value, tip) in enumerate(zip(values, tips, strict=True)):
        if value is None:
            continue
        bar, x = plot_h * min(value / top, 1.0), left + i * step
        out.append(
            f'<rect x="{x + 1:.1f}" y="{base - bar:.1f}" width="{step - 2:.1f}" '
            f'height="{bar:.1f}" fill="#69c"><title>{escape(tip)}</title></rect>'
        )
        if notes:
            out.append(f'<text x="{x + step / 2:.1f}" y="{base - bar - 3:.1f}" '
                       f'text-anchor="middle">{escape(notes[i])}</text>')  # fmt: skip
    for fraction in (0.0, 0.5, 1.0):
        out.append(f'<text x="{left - 4}" y="{base - plot_h * fraction + 4:.1f}" '
                   f'text-anchor="end">{escape(label(top * fraction))}</text>')  # fmt: skip
    for i in range(0, len(values) + 1, max(1, round(len(values) / 10))):
        out.append(f'<text x="{left + i * step:.1f}" y="{height - 6}" text-anchor="middle">'
                   f"{i / len(values):.1f}</text>")  # fmt: skip
    out.append(f'<path d="M{left} {pad}V{base}H{left + plot_w}" stroke="#999" fill="none"/>')
    if marker is not None:
        x, anchor = left + plot_w * marker, "end" if marker > 0.8 else "start"
        out.append(f'<path d="M{x:.1f} {pad}V{base}" stroke="#c33" stroke-dasharray="4 3"/>'
                   f'<text x="{x + (-4 if marker > 0.8 else 4):.1f}" y="{pad + 10}" '
                   f'text-anchor="{anchor}" fill="#c33">{marker:.2f}</text>')  # fmt: skip
    return "".join(out) + "</svg>"


# Publishing -----------------------------------------------------------------------------------


def _publish(staging: Path, folder: Path, dest: Path, index: str, *, force: bool) -> None:
    """The index to a temporary file, the folder swapped in, the index renamed (module
    docstring). Each page's commit fsynced the staging folder; the index's fsyncs the parent."""
    file = AtomicFile(dest, force=force)
    old: Path | None = None
    try:
        file.handle.write(index)
        file.close()
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.old")
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
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _number(value: float | None, digits: int) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}f}"


def _document(title: str, body: str) -> str:
    """A whole page; `title` and `body` are HTML, already escaped."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em auto;max-width:72em;padding:0 1em;color:#222}
nav{margin:.5em 0;display:flex;gap:1em}nav span{color:#777}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(30em,1fr));gap:.8em}
.draft{display:flex;gap:.8em;border:1px solid #ddd;border-radius:4px;padding:.5em}
.draft img,.thumb{flex:none;align-self:flex-start}.draft p{margin:.2em 0}
.thumb.none{min-height:6em;background:#eee;color:#777;font-size:11px;overflow:hidden;
 display:flex;align-items:center;justify-content:center;text-align:center}
.caption{font-size:16px}mark{background:#fd8;border-radius:2px}mark.end{font-size:11px}
.scores,.path,.review,.alternatives{font-size:12px;color:#555}.path{word-break:break-all}
.alternatives{margin:.2em 0;padding-left:1.5em}
.flag,.outcome{border-radius:2px;padding:0 .3em;background:#eee}.flag{background:#fdd}
.accepted{background:#cfc}.edited{background:#ffd}.rejected{background:#fcc}.correction{color:#222}
table{border-collapse:collapse}td,th{padding:.1em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}tr{border-bottom:1px solid #eee}
svg{max-width:100%;height:auto}dt{font-weight:bold;float:left;clear:left;width:9em}dd{margin-left:10em}
"""
