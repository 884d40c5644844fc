"""The HTML of `labeler report`: page cards, navigation, the index with its SVG charts, the style.

Pure functions from rows and stats to strings, and the records they are made from (ReportResult,
WrittenPage); report.py streams, parallelises and publishes.
Every string that comes from the store goes through `escape` here: `html.escape(quote=True)`
after each bidirectional control character is replaced by a visible `<U+202E>`, so that a file
name or caption cannot reorder itself on screen (a name ending "gpj.exe" behind U+202E).
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from labeler.records import END_TOKEN, ExportRow
from labeler.review.stats import Stats
from labeler.store.drafts import DraftFilter


@dataclass
class ReportResult:
    index: Path
    folder: Path
    pages: list[Path] = field(default_factory=list)
    drafts: int = 0
    thumbnails: int = 0
    placeholders: Counter[str] = field(default_factory=Counter)  # by status: "missing", ...
    elapsed_s: float = 0.0
    removed: int = 0  # staging folders and temporary files of killed reports, removed first
    removed_bytes: int = 0


@dataclass(frozen=True)
class WrittenPage:
    """What the index needs of a written page; its rows are let go, so memory stays flat."""

    number: int
    drafts: int
    first: float  # p_accept of its first and last draft
    last: float


# The explicit embeddings, overrides and isolates, the implicit marks and the Arabic letter mark.
BIDI_CONTROLS = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_VISIBLE = {code: f"<U+{code:04X}>" for code in BIDI_CONTROLS}

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def escape(value: str) -> str:
    """HTML-escaped text for an element or a quoted attribute, bidi controls made visible."""
    return html.escape(value.translate(_VISIBLE), quote=True)


def page_name(number: int) -> str:
    return f"page-{number:04d}.html"


def nav(number: int, has_next: bool, index_href: str) -> str:
    links = [f'<a href="{page_name(number - 1)}" rel="prev">&larr; previous</a>'] * (number > 1)
    links.append(f'<a href="{index_href}">index</a>')
    links += [f'<a href="{page_name(number + 1)}" rel="next">next &rarr;</a>'] * has_next
    return f"<nav>{' '.join(links)} <span>page {number}</span></nav>\n"


def card(row: ExportRow, thumb: str, why: str, thumb_size: int) -> str:
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
        f'data-p-accept="{row.p_accept:.6f}" data-confidence="{row.confidence:.6f}">'
        f'{image}<div>\n<p class="caption">{marked_caption(row)}</p>\n'
        f'<p class="scores"><b>{row.p_accept:.3f}</b> p_accept &middot; {row.confidence:.3f} '
        f"confidence &middot; log-likelihood {row.log_likelihood:.2f} over {row.num_tokens} "
        f"tokens &middot; margin {number(row.margin, 2)}{badges}"
        f"</p>\n{alternatives(row)}{review(row)}"
        f'<p class="path">{where} &middot; image {row.image_id}</p>\n</div></article>\n'
    )


def marked_caption(row: ExportRow) -> str:
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


def alternatives(row: ExportRow) -> str:
    items = [f"<li>{escape(a.text)} <small>{a.p_accept:.3f}</small></li>"
             for a in row.alternatives]  # fmt: skip
    return f'<ol class="alternatives" start="2">{"".join(items)}</ol>\n' if items else ""


def review(row: ExportRow) -> str:
    outcome = escape(row.review_outcome or "unreviewed")
    parts = [f'<span class="outcome {outcome}">{outcome}</span>']
    if row.review_text and row.review_text != row.text:
        parts.append(f'<q class="correction">{escape(row.review_text)}</q>')
    if row.reviewer:
        parts.append(f"by {escape(row.reviewer)}")
    if row.reviewed_at:
        parts.append(row.reviewed_at.strftime("%Y-%m-%d"))
    return f'<p class="review">{" ".join(parts)}</p>\n'


def index(stats: Stats, pages: list[WrittenPage], result: ReportResult, folder: str,
           spec: DraftFilter, sort: str) -> str:  # fmt: skip
    href = escape(quote(folder))
    rows = [f'<tr><td><a href="{href}/{page_name(p.number)}">page {p.number}</a></td>'
            f"<td>{p.drafts}</td><td>{p.first:.3f}</td><td>{p.last:.3f}</td></tr>\n"
            for p in pages]  # fmt: skip
    head = "<table><tr><th>page</th><th>drafts</th><th>first</th><th>last</th></tr>\n"
    listing = f"{head}{''.join(rows)}</table>" if pages else "<p>No drafts match this filter.</p>"
    title = f"Draft captions: {escape(stats.model)}"
    return document(title, (
        f"<h1>{title}</h1>\n{summary(stats, result, spec, sort)}\n"
        f"<h2>p_accept</h2>\n{histogram(stats)}\n"
        f"<h2>Calibration against reviews</h2>\n{calibration(stats)}\n"
        f"<h2>Pages</h2>\n<p>p_accept of the first and last draft of each page.</p>\n{listing}"
    ))  # fmt: skip


def summary(stats: Stats, result: ReportResult, spec: DraftFilter, sort: str) -> str:
    chosen = [f"{f.name}={getattr(spec, f.name)!r}" for f in fields(spec)
              if getattr(spec, f.name) != f.default]  # fmt: skip
    missing = ", ".join(f"{n} {status}" for status, n in result.placeholders.most_common())
    items = {
        "model": f"{stats.model}, decoding settings {stats.settings_key}",
        "selection": "; ".join(chosen) or "every current draft",
        "sorted by": sort,
        "drafts": f"{result.drafts} shown of {stats.drafts} selected, {stats.flagged} flagged",
        "mean p_accept": "-" if stats.mean_p_accept is None else f"{stats.mean_p_accept:.3f}",
        "mean confidence": "-" if stats.mean_confidence is None else f"{stats.mean_confidence:.3f}",
        "reviews": ", ".join(f"{n} {o}" for o, n in stats.outcomes.most_common()) or "none yet",
        "thumbnails": f"{result.thumbnails}" + (f" (no preview: {missing})" if missing else ""),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{escape(v)}</dd>" for k, v in items.items()) + "</dl>"


def histogram(stats: Stats) -> str:
    tips = [f"{b.low:.2f}-{b.high:.2f}: {n} drafts"
            for b, n in zip(stats.bands, stats.histogram, strict=True)]  # fmt: skip
    top = max(stats.histogram, default=0) or 1
    return bars([float(n) for n in stats.histogram], top, tips, "{:,.0f}".format)


def calibration(stats: Stats) -> str:
    bands = stats.bands
    if not any(b.reviewed for b in bands):
        return ('<p class="no-reviews">No reviews yet: import the reviewers\' corrections '
                "(<code>labeler import</code>) to see how often the drafts of each p_accept "
                "band are accepted unchanged.</p>")  # fmt: skip
    tips = [f"{b.low:.2f}-{b.high:.2f}: {b.accepted} of {b.reviewed} accepted unchanged"
            for b in bands]  # fmt: skip
    chart = bars([b.acceptance for b in bands], 1.0, tips, "{:.0%}".format,
                  [f"n={b.reviewed}" for b in bands], stats.threshold)  # fmt: skip
    lines = [f"<tr><td>{b.low:.2f}-{b.high:.2f}</td><td>{b.drafts}</td><td>{b.reviewed}</td>"
             f"<td>{number(b.predicted, 2)}</td><td>{number(b.acceptance, 2)}</td>"
             f"<td>{number(b.mean_edit_distance, 2)}</td><td>{number(b.bleu, 3)}</td></tr>\n"
             for b in bands]  # fmt: skip
    note = (f"AUROC of p_accept for acceptance: {number(stats.auroc, 3)} (of confidence: "
            f"{number(stats.signal_auroc.get('confidence'), 3)}); expected calibration error "
            f"{number(stats.ece, 3)}. ")  # fmt: skip
    if stats.threshold is None:
        note += f"No p_accept threshold reaches {stats.target:.0%}."
    else:
        note += (f"Drafts with p_accept at or above {stats.threshold:.3f} (the dashed line) "
                 f"were accepted unchanged at least {stats.target:.0%} of the time; "
                 f"{stats.passed} drafts score that high.")  # fmt: skip
    return (f"{chart}\n<p>{note}</p>\n<table><tr><th>p_accept</th><th>drafts</th>"
            "<th>reviewed</th><th>predicted</th><th>accepted</th><th>word edits</th>"
            "<th>BLEU-4</th></tr>\n"
            f"{''.join(lines)}</table>")  # fmt: skip


def bars(values: list[float | None], top: float, tips: list[str], label: Callable[[float], str],
          notes: list[str] | None = None, marker: float | None = None) -> str:  # fmt: skip
    """An SVG bar chart over the p_accept range [0, 1], a bar per band (None: none) with a
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


def number(value: float | None, digits: int) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}f}"


def document(title: str, body: str) -> str:
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
