"""The HTML report on real stores (scanned images, drafts from a tiny real model, reviews):
pages in confidence order, embedded thumbnails, no network, escaping, placeholders, atomicity."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
from datetime import datetime, timezone
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import imagefactory as make
import pytest
from captionkit import tiny_checkpoint
from PIL import Image as PILImage
from sqlalchemy import update
from typer.testing import CliRunner

from labeler.caption.job import caption_images
from labeler.cli import app
from labeler.errors import InputError
from labeler.files.scan import scan
from labeler.model.captioner import ShowTellCaptioner
from labeler.model.drafts import DecodeSettings
from labeler.review.report import write_report
from labeler.store.drafts import DraftFilter, iter_drafts
from labeler.store.models import Caption, Model, Review

SETTINGS = DecodeSettings(beam_size=3, max_len=8, n_best=3)
VOID = {"meta", "img", "br", "hr", "input", "link"}
EVIL = "<script>alert(\"x\")</script> & 'q'"


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    return ShowTellCaptioner.from_checkpoint(path, device="cpu")


def build(store, captioner, folder: Path, n: int = 7) -> None:
    make.write_many(folder, n, size=(200, 150))
    scan(store, [folder], workers=1)
    caption_images(store, captioner, settings=SETTINGS, workers=0, procs=0)


def drafts(store, spec=DraftFilter(), sort="confidence"):
    with store.session() as session:
        return list(iter_drafts(session, spec, sort=sort, n_best=3))


def review(store, row, outcome: str, text: str | None = None, reviewer: str = "ann") -> None:
    with store.write() as session:
        session.add(Review(
            image_id=row.image_id, caption_id=row.caption_id, text=text or row.text,
            outcome=outcome, reviewer=reviewer, reviewed_at=datetime.now(timezone.utc),
            fingerprint=f"test:{row.image_id}:{outcome}",
        ))  # fmt: skip


class Page(HTMLParser):
    """A page parsed: tags must balance; what the tests look at is collected."""

    def __init__(self, path: Path):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.drafts: list[dict[str, str]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.marks: list[str] = []
        self.placeholders = 0
        self._in_mark = False
        self.text = path.read_text(encoding="utf-8")
        self.feed(self.text)
        self.close()
        assert not self.stack, f"{path.name}: unclosed {self.stack}"

    def handle_starttag(self, tag, attrs):
        self._record(tag, dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <path .../> in SVG: nothing to close
        self._record(tag, dict(attrs))

    def _record(self, tag, attributes):
        if tag == "article":
            self.drafts.append(attributes)
        if tag == "img":
            self.images.append(attributes["src"])
        if tag == "a":
            self.links.append(attributes["href"])
        if "none" in (attributes.get("class") or "").split():
            self.placeholders += 1
        self._in_mark = tag == "mark"

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"</{tag}> closes {self.stack}"

    def handle_data(self, data):
        if self._in_mark:
            self.marks.append(data)
            self._in_mark = False


def every_file(result) -> list[Path]:
    return [result.index, *sorted(result.folder.iterdir())]


def test_pages_hold_the_drafts_in_confidence_order_with_embedded_thumbnails(
    store, captioner, tmp_path
):
    build(store, captioner, tmp_path / "photos", n=7)
    with store.write() as session:  # one draft least sure of its end, one of its second word
        for image_id, logprobs in ((1, [-0.1, -0.2, -0.3, -2.0]), (2, [-0.1, -2.5, -0.3, -0.2])):
            best = (Caption.image_id == image_id) & (Caption.rank == 0)
            values = {"text": "a red square", "token_logprobs": logprobs, "finished": True}
            session.execute(update(Caption).where(best).values(**values))
    expected = drafts(store)
    result = write_report(store, tmp_path / "report.html", per_page=3, workers=0)
    assert result.drafts == 7 and result.thumbnails == 7 and not result.placeholders
    assert [p.name for p in result.pages] == ["page-0001.html", "page-0002.html", "page-0003.html"]
    assert sorted(result.folder.iterdir()) == result.pages  # nothing else, no temporary file
    pages = [Page(p) for p in result.pages]
    assert [len(p.drafts) for p in pages] == [3, 3, 1]
    shown = [d for p in pages for d in p.drafts]
    assert [int(d["data-image-id"]) for d in shown] == [r.image_id for r in expected]
    confidences = [float(d["data-confidence"]) for d in shown]
    assert confidences == sorted(confidences)
    everything = "".join(p.text for p in pages)
    assert (
        'a red square <mark class="end" title="least certain: p = 0.135">&lt;end&gt;</mark>'
        in everything
    )
    assert 'a <mark title="least certain: p = 0.082">red</mark> square' in everything
    for page, rows in zip(pages, (expected[:3], expected[3:6], expected[6:]), strict=True):
        assert page.marks == [least_certain_mark(r) for r in rows]
        for row in rows:  # the alternatives and the scores are there
            assert all(escape(alt.text) in page.text for alt in row.alternatives)
            assert f"{row.confidence:.3f}" in page.text
        for src in page.images:
            assert src.startswith("data:image/jpeg;base64,")
            thumb = PILImage.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
            assert thumb.format == "JPEG" and max(thumb.size) == 160
    # The same navigation above and below the drafts.
    assert pages[0].links == ["../report.html", "page-0002.html"] * 2
    assert pages[1].links == ["page-0001.html", "../report.html", "page-0003.html"] * 2
    assert pages[2].links == ["page-0002.html", "../report.html"] * 2
    index = Page(result.index)
    assert index.links == [f"report_files/page-000{i}.html" for i in (1, 2, 3)]
    assert "<svg" in index.text and "No reviews yet" in index.text
    for path in every_file(result):
        assert_self_contained(path.read_text(encoding="utf-8"))


def test_pages_are_in_p_accept_order_by_default_and_cards_show_it(store, captioner, tmp_path):
    build(store, captioner, tmp_path / "photos", n=5)
    by_confidence = drafts(store)
    with store.write() as session:  # a calibrator that ranks them the other way round
        for i, row in enumerate(by_confidence):
            values = {"p_accept": 0.9 - 0.2 * i}
            session.execute(update(Caption).where(Caption.id == row.caption_id).values(**values))
    expected = drafts(store, sort="p_accept")
    assert [r.image_id for r in expected] == [r.image_id for r in reversed(by_confidence)]
    result = write_report(store, tmp_path / "report.html", per_page=2, workers=0, thumb_size=0)
    pages = [Page(p) for p in result.pages]
    shown = [d for p in pages for d in p.drafts]
    assert [int(d["data-image-id"]) for d in shown] == [r.image_id for r in expected]
    assert [float(d["data-p-accept"]) for d in shown] == [round(r.p_accept, 6) for r in expected]
    for row in expected:
        assert f"<b>{row.p_accept:.3f}</b> p_accept &middot; {row.confidence:.3f} confidence" in (
            pages[0].text + pages[1].text + pages[2].text
        )
    index = result.index.read_text(encoding="utf-8")
    assert "<dt>sorted by</dt><dd>p_accept</dd>" in index and "<dt>mean p_accept</dt>" in index
    assert f"<td>{expected[0].p_accept:.3f}</td><td>{expected[1].p_accept:.3f}</td>" in index


def least_certain_mark(row) -> str:
    word, _ = row.least_certain
    index = row.least_certain_index
    assert (index < len(row.text.split())) == (word != "<end>")
    return word


def assert_self_contained(text: str) -> None:
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(/|[a-z]+:)(?!image/jpeg;base64)""", text)
    assert not re.search(r"<script|@import|url\(", text, re.IGNORECASE)


def test_names_and_captions_are_escaped_everywhere(store, captioner, tmp_path):
    folder = tmp_path / "photos"
    make.write_many(folder, 2, size=(64, 48))
    make.rgb_jpeg(folder, "a<script>b\"c'd&e.jpg")
    raw = make.non_utf8_name(folder)
    scan(store, [folder], dataset='<script>alert("ds")</script>', workers=1)
    caption_images(store, captioner, settings=SETTINGS, workers=0, procs=0)
    with store.write() as session:
        session.execute(update(Caption).where(Caption.image_id == 1).values(text=EVIL))
        session.execute(update(Model).values(name="<script>model</script>"))
    rows = {r.image_id: r for r in drafts(store)}
    review(store, rows[2], "edited", text=EVIL, reviewer="<script>who</script>")
    result = write_report(store, tmp_path / "report.html", per_page=2, workers=0)
    assert result.thumbnails == 4
    texts = [path.read_text(encoding="utf-8") for path in every_file(result)]
    everything = "\n".join(texts)
    assert "<script" not in everything.lower()  # the report has no script of its own either
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27;" in everything
    assert "&lt;script&gt;model&lt;/script&gt;" in texts[0]
    assert 'alt="&lt;script&gt;alert(&quot;ds&quot;)&lt;/script&gt;/a&lt;script&gt;' in everything
    assert "b&quot;c&#x27;d&amp;e.jpg" in everything
    assert "caf\\xe9-\\xff.png" in everything  # the raw name, shown with backslash escapes
    assert os.path.exists(raw)
    for path in every_file(result):
        Page(path)


def test_bidirectional_controls_in_names_and_captions_are_shown_not_obeyed(
    store, captioner, tmp_path
):
    folder = tmp_path / "photos"
    make.rgb_jpeg(folder, "report\u202efdp.jpg")  # shows as "reportgpj.pdf" when obeyed
    scan(store, [folder], workers=1)
    caption_images(store, captioner, settings=SETTINGS, workers=0, procs=0)
    with store.write() as session:
        caption = "a \u2067cat\u2069 on <b>"
        session.execute(update(Caption).where(Caption.rank == 1).values(text=caption))
    result = write_report(store, tmp_path / "report.html", workers=0)
    everything = "\n".join(path.read_text(encoding="utf-8") for path in every_file(result))
    controls = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    assert not any(c in everything for c in controls)
    assert 'alt="photos/report&lt;U+202E&gt;fdp.jpg"' in everything
    assert "photos/report&lt;U+202E&gt;fdp.jpg &middot; image 1" in everything
    assert "&lt;U+2067&gt;cat&lt;U+2069&gt;" in everything and "&lt;b&gt;" in everything
    for path in every_file(result):
        Page(path)


def test_an_image_that_no_longer_decodes_gets_a_placeholder(store, captioner, tmp_path):
    folder = tmp_path / "photos"
    build(store, captioner, folder, n=4)
    (folder / "img_000001.jpg").write_bytes(b"not an image any more")
    (folder / "img_000002.jpg").unlink()
    result = write_report(store, tmp_path / "report.html", workers=0)
    assert result.thumbnails == 2 and sum(result.placeholders.values()) == 2
    assert result.placeholders["missing"] == 1
    (page,) = [Page(p) for p in result.pages]
    assert len(page.images) == 2 and page.placeholders == 2 and len(page.drafts) == 4
    assert "no such file" in page.text
    assert re.search(r"no preview: .*1 missing", result.index.read_text(encoding="utf-8"))


def test_reviews_show_with_their_outcome_and_the_calibration_chart(store, captioner, tmp_path):
    build(store, captioner, tmp_path / "photos", n=6)
    rows = drafts(store)
    review(store, rows[0], "rejected", text="")
    review(store, rows[1], "edited", text="a small grey square")
    for row in rows[3:]:
        review(store, row, "accepted")
    result = write_report(store, tmp_path / "report.html", workers=0, n_best=1)
    (page,) = [Page(p) for p in result.pages]
    assert '<q class="correction">a small grey square</q>' in page.text
    for outcome, n in (("rejected", 1), ("edited", 1), ("unreviewed", 1), ("accepted", 3)):
        assert page.text.count(f'<span class="outcome {outcome}">') == n
    assert '<ol class="alternatives"' not in page.text  # n_best=1: no alternatives
    index = Page(result.index).text
    assert "No reviews yet" not in index and "accepted unchanged" in index
    assert index.count("<svg") == 2 and "AUROC" in index


def test_filters_sort_and_limit_as_in_exports(store, captioner, tmp_path):
    build(store, captioner, tmp_path / "photos", n=6)
    spec = DraftFilter(limit=4)
    expected = [r.image_id for r in drafts(store, spec, sort="-confidence")]
    result = write_report(store, tmp_path / "r.html", spec=spec, sort="-confidence", workers=0)
    shown = [int(d["data-image-id"]) for p in result.pages for d in Page(p).drafts]
    assert shown == expected and len(shown) == 4
    assert "4 shown of 6 selected" in result.index.read_text(encoding="utf-8")
    with pytest.raises(InputError, match="unknown sort"):
        write_report(store, tmp_path / "s.html", sort="colour")
    nothing = write_report(store, tmp_path / "t.html", spec=DraftFilter(min_confidence=2.0))
    assert nothing.pages == [] and "No drafts match" in nothing.index.read_text(encoding="utf-8")


def test_an_existing_report_is_kept_unless_forced(store, captioner, tmp_path):
    build(store, captioner, tmp_path / "photos", n=5)
    dest = tmp_path / "report.html"
    first = write_report(store, dest, per_page=2, workers=0)
    assert len(first.pages) == 3
    before = {p: p.read_bytes() for p in every_file(first)}
    with pytest.raises(InputError, match="already exists"):
        write_report(store, dest, per_page=2, workers=0)
    dest.unlink()  # the pages folder alone also blocks
    with pytest.raises(InputError, match="report_files already exists"):
        write_report(store, dest, workers=0)
    dest.write_bytes(before[dest])
    assert {p: p.read_bytes() for p in every_file(first)} == before
    second = write_report(store, dest, per_page=4, workers=0, force=True)
    assert [p.name for p in every_file(second)] == ["report.html", "page-0001.html",
                                                    "page-0002.html"]  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging, no old


def test_a_failure_midway_leaves_the_old_report_and_no_staging_folder(store, captioner, tmp_path):
    build(store, captioner, tmp_path / "photos", n=5)
    dest = tmp_path / "report.html"
    old = write_report(store, dest, per_page=2, workers=0)
    before = {p: p.read_bytes() for p in every_file(old)}

    def interrupted(progress):
        if progress.done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_report(store, dest, per_page=2, workers=0, force=True, progress=interrupted)
    assert {p: p.read_bytes() for p in every_file(old)} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_process_pool_writes_the_same_pages(store, captioner, tmp_path):
    build(store, captioner, tmp_path / "photos", n=9)
    inline = write_report(store, tmp_path / "a.html", per_page=4, workers=0)
    pooled = write_report(store, tmp_path / "b.html", per_page=4, workers=2)
    assert [p.read_bytes() for p in inline.pages] == [
        p.read_bytes().replace(b"../b.html", b"../a.html") for p in pooled.pages
    ]


def test_the_report_command(store, captioner, tmp_path):
    build(store, captioner, tmp_path / "photos", n=3)
    runner = CliRunner()
    args = ["report", "-o", str(tmp_path / "r.html"), "--db", store.url, "--workers", "0"]
    done = runner.invoke(app, [*args, "--per-page", "2", "--json"])
    assert done.exit_code == 0, done.output
    assert '"pages": 2' in done.output and '"thumbnails": 3' in done.output
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists; use --force" in again.output
    forced = runner.invoke(app, [*args, "--force", "--thumb-size", "0"])
    assert forced.exit_code == 0 and "3 drafts in 1 pages, 0 thumbnails" in forced.output


# Leftovers of killed reports ------------------------------------------------------------------

REPORTER = """
import sys, time
from pathlib import Path
from labeler.review.report import write_report
from labeler.store import open_store

def pause(progress):
    if progress.done >= 2:  # page 1 is in the staging folder
        print("ready", flush=True)
        time.sleep(120)

write_report(open_store(sys.argv[1]), Path(sys.argv[2]), per_page=2, workers=0, thumb_size=0,
             progress=pause)
"""


@pytest.fixture
def reporters():
    """Start child processes paused midway through a report; kill those still alive at the end."""
    started: list[subprocess.Popen] = []

    def start(url: str, dest: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", REPORTER, url, str(dest)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            kill(process)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def staging_folders(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob(".report_files.*"))


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_the_next_report_removes_the_staging_folders_of_killed_reports(
    store, store_url, captioner, tmp_path, reporters
):
    build(store, captioner, tmp_path / "photos", n=5)
    dest = tmp_path / "report.html"
    kill(reporters(store_url, dest))
    aside = tmp_path / ".report_files.0123abcd.old"  # moved aside by a report killed publishing
    aside.mkdir()
    (aside / "page-0001.html").write_text("old page", encoding="utf-8")
    (staging,) = [p for p in staging_folders(tmp_path) if p.suffix == ".tmp"]
    assert [p.name for p in staging.iterdir()] == ["page-0001.html"]
    size = size_of(staging) + size_of(aside)
    result = write_report(store, dest, per_page=2, workers=0, thumb_size=0)
    assert (result.removed, result.removed_bytes) == (2, size) and size > 1000
    assert staging_folders(tmp_path) == [] and len(result.pages) == 3


def test_a_running_reports_staging_folder_is_kept(store, store_url, captioner, tmp_path, reporters):
    build(store, captioner, tmp_path / "photos", n=5)
    dest = tmp_path / "report.html"
    running = reporters(store_url, dest)
    (staging,) = staging_folders(tmp_path)
    result = write_report(store, dest, per_page=2, workers=0, thumb_size=0)
    assert (result.removed, result.removed_bytes) == (0, 0)
    assert staging_folders(tmp_path) == [staging] and running.poll() is None
    kill(running)  # once its report is dead, the next one removes its folder
    size = size_of(staging)
    out = CliRunner().invoke(app, ["report", "--db", store.url, "-o", str(dest), "--force",
                                   "--per-page", "2", "--thumb-size", "0"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert (f"removed 1 leftover staging folder or file ({size / 1e6:.1f} MB) of killed "
            "reports") in out.output  # fmt: skip
    assert staging_folders(tmp_path) == []
