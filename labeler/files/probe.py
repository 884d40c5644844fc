"""One file at a time for the scan: size, modification time, content hash and image facts
(format, displayed size, mode, frames), with a status and a one-line reason (`probe`), never a
stray exception.

Design choices:
- One open (`O_NONBLOCK`, so a named pipe cannot hang a scan), one `fstat`, and for a file under
  `CHUNK_SIZE` one read whose bytes serve both the hash and the image parser. Larger files are
  hashed in chunks, never held whole, and Pillow re-reads what it needs from the page cache.
- Verification checks structure, where real damage (a cut-off copy, flipped bits) shows, rather
  than decoding pixels, which costs many times the hashing: every PNG chunk's CRC up to IEND; a
  JPEG's EOI marker (without it, a 1/8-scale draft decode decides; libjpeg silently repairs
  damage inside a complete stream, so decoding a complete JPEG adds nothing); WebP's container
  is demuxed by Pillow's open(); other formats decode their first frame. `decode=True` decodes
  every first frame as well, which also catches a bad zlib stream under valid PNG CRCs.
- Pillow parses headers in Python at two to four times the cost of hashing a small file, so a
  PNG or JPEG in memory is read by the fast path in headers.py, which hands anything unusual to
  Pillow. A differential test pins both paths to the same answers.
- The opening, the pixel limit and Pillow's failures are decode.py's, shared with `load_rgb`.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import IO

from labeler.files.decode import (
    DEFAULT_MAX_PIXELS,
    JPEG_FORMATS,
    NO_SUCH_FILE,
    TAIL,
    ImageDecodeError,
    Status,
    check_pixels,
    decode_image,
    decode_reason,
    exif_orientation,
    open_image,
    open_regular,
    os_reason,
)
from labeler.files.headers import Header, fast_header

__all__ = ["CHUNK_SIZE", "NO_SUCH_FILE", "Probe", "hash_file", "probe"]

CHUNK_SIZE = 1 << 20  # files up to this size are read with one read() and never twice


@dataclass(frozen=True)
class Probe:
    """What `probe` learned about one file. Fields it could not learn are None; `reason` is ""
    when the status is "ok". Width and height are as displayed, after EXIF orientation."""

    status: Status
    reason: str = ""
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    frames: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Content:
    size: int
    sha256: str
    data: bytes | None  # the whole file when it fit in one read, else None
    tail: bytes  # the last bytes, for end-of-image markers


@dataclass
class _Facts:
    """Filled in as `_inspect` learns them, so a failure part way still reports what is known."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    frames: int | None = None


def probe(
    path: str | bytes | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode: bool = False,
) -> Probe:
    """Size, mtime, content hash and image facts of one file, with its status. Never raises
    (except KeyboardInterrupt and the like). A file that vanished is "unreadable" with the
    reason `NO_SUCH_FILE`."""
    try:
        fd, st = open_regular(path)
    except ImageDecodeError as err:
        status = "unreadable" if err.status == "missing" else err.status
        return Probe(status=status, reason=err.reason)
    try:
        return _probe_open_file(fd, st, max_pixels, decode)
    except Exception as err:  # a safety net: one odd file must not stop a bulk scan
        return Probe(status="unreadable", reason=f"unexpected {type(err).__name__}: {err}")
    finally:
        os.close(fd)


def hash_file(path: str | bytes | os.PathLike) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a regular file, read in chunks. Raises OSError."""
    with open(path, "rb", buffering=0) as raw:
        content = _stream(raw)
    return content.size, content.sha256


def _read(fd: int, expected_size: int) -> _Content:
    """The file's hash, and its bytes when it is small. One read() for a file whose fstat size
    is under a chunk; a file that grew or came back short meanwhile is streamed from the start."""
    if expected_size < CHUNK_SIZE:
        data = os.read(fd, expected_size + 1)
        if len(data) == expected_size:
            return _Content(len(data), hashlib.sha256(data).hexdigest(), data, data[-TAIL:])
        os.lseek(fd, 0, os.SEEK_SET)
    with open(fd, "rb", buffering=0, closefd=False) as raw:
        return _stream(raw)


def _stream(raw: io.RawIOBase) -> _Content:
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    size, tail = 0, b""
    while n := raw.readinto(buffer):
        chunk = view[:n]
        hasher.update(chunk)
        tail = (tail + bytes(chunk[-TAIL:]))[-TAIL:]
        size += n
    return _Content(size, hasher.hexdigest(), None, tail)


# Probing --------------------------------------------------------------------------------------


def _probe_open_file(fd: int, st: os.stat_result, max_pixels: int, decode: bool) -> Probe:
    try:
        content = _read(fd, st.st_size)
    except OSError as err:
        return Probe(status="unreadable", reason=os_reason(err), mtime_ns=st.st_mtime_ns)
    known = {"size": content.size, "mtime_ns": st.st_mtime_ns, "sha256": content.sha256}
    if content.size == 0:
        return Probe(status="unsupported", reason="not an image: empty file", **known)
    header = fast_header(content.data) if content.data is not None and not decode else None
    if header is not None:
        return _probe_from_header(header, known, max_pixels)
    facts = _Facts()
    # Small files are already in memory; a large one is re-read by Pillow from the page cache.
    if content.data is not None:
        fp: IO[bytes] = io.BytesIO(content.data)
    else:
        fp = open(fd, "rb", closefd=False)  # noqa: SIM115 - closed below, the fd by probe()
        fp.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _inspect(fp, content, facts, max_pixels, decode)
    except ImageDecodeError as err:
        return Probe(status=err.status, reason=err.reason, **known, **vars(facts))
    finally:
        fp.close()
    return Probe(status="ok", **known, **vars(facts))


def _probe_from_header(header: Header, known: dict, max_pixels: int) -> Probe:
    width, height = header.width, header.height
    facts = {"format": header.format, "mode": header.mode, "frames": 1}
    facts["width"], facts["height"] = (
        (height, width) if header.orientation >= 5 else (width, height)
    )
    try:
        check_pixels(width, height, max_pixels)
    except ImageDecodeError as err:
        return Probe(status=err.status, reason=err.reason, **known, **facts)
    return Probe(status="ok", **known, **facts)


def _inspect(fp: IO[bytes], content: _Content, facts: _Facts, max_pixels: int, decode: bool):
    """Header facts into `facts`, then a verification of the data; raises ImageDecodeError."""
    im = open_image(fp, max_pixels)
    facts.format, facts.mode = im.format, im.mode
    width, height = im.size
    orientation = exif_orientation(im)
    facts.width, facts.height = (height, width) if orientation >= 5 else (width, height)
    check_pixels(width, height, max_pixels)
    try:
        facts.frames = int(getattr(im, "n_frames", 1))  # GIF walks its frames; TIFF its IFDs
    except Exception as err:
        raise ImageDecodeError("unreadable", decode_reason(im.format, err)) from None
    if im.format in JPEG_FORMATS:
        if decode or not content.tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
            im.draft("L" if im.mode == "RGB" else im.mode, (1, 1))  # 1/8 scale, luma only
            decode_image(im)
    elif im.format == "PNG":
        decode_image(im, verify=True)
        if decode:
            fp.seek(0)  # verify() leaves the image unusable; Pillow says to reopen
            decode_image(open_image(fp, max_pixels))
    elif decode or im.format != "WEBP":  # WebP's open() has already demuxed the whole file
        decode_image(im)
