"""One image file at a time: what it is and whether it can be read (`probe`, for the scan),
and its pixels as RGB (`load_rgb`, for the caption job).

Every failure is a status and a one-line reason, never a stray exception: `probe` returns them
in a `Probe`, `load_rgb` raises `ImageDecodeError`. Statuses: "ok"; "unreadable" (I/O error,
permission, not a regular file, truncated or corrupt data); "unsupported" (not an image we can
decode); "too_large" (more pixels than `max_pixels`, judged from the header before decoding);
"missing" (from `load_rgb` only: the file is gone).

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
  PNG or JPEG in memory is read by the fast path in imageheaders.py, which hands anything
  unusual to Pillow. A differential test pins both paths to the same answers.
- Pillow's decompression-bomb guard is process-wide (an error above 2 * Image.MAX_IMAGE_PIXELS).
  DEFAULT_MAX_PIXELS equals that threshold; a larger `max_pixels` raises Pillow's limit to match
  (never lowers it); a DecompressionBombError that still escapes is "too_large".
- Pillow's warnings are muted per call, since a library must not print. `catch_warnings` is
  process-wide state, so run probes in processes (as the scan does), not threads.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from typing import IO, Literal

from PIL import Image, UnidentifiedImageError

from labeler.errors import LabelerError
from labeler.imageheaders import ORIENTATION_TAG, Header, fast_header, xmp_orientation

Status = Literal["ok", "unreadable", "unsupported", "too_large", "missing"]

# Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS, about 13400x13400), so by default both
# guards agree and Pillow's global is left alone.
DEFAULT_MAX_PIXELS = 178_956_970
CHUNK_SIZE = 1 << 20  # files up to this size are read with one read() and never twice
NO_SUCH_FILE = "no such file"  # probe's reason for a file that vanished after the walk

_TAIL = 64  # bytes kept from a file's start or end, for signatures and end-of-image markers
_JPEG_FORMATS = ("JPEG", "MPO")
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # the same table as ImageOps.exif_transpose; orientations 5-8 swap width and height
_ERRNO_REASONS = {
    errno.ENOENT: NO_SUCH_FILE,
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a parent in the path is not a folder",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "I/O error",
}
_NOT_REGULAR = {
    stat.S_IFDIR: "is a directory",
    stat.S_IFIFO: "not a regular file: named pipe",
    stat.S_IFSOCK: "not a regular file: socket",
    stat.S_IFCHR: "not a regular file: device",
    stat.S_IFBLK: "not a regular file: device",
}
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the scan; no effect on regular files
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class ImageDecodeError(LabelerError):
    """An image that cannot be used, with the status and reason to record for it."""

    def __init__(self, status: Status, reason: str):
        # Both go into args so the error pickles across loader worker processes.
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


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


# Public API -----------------------------------------------------------------------------------


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
        fd, st = _open_regular(path)
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


def load_rgb(
    path: str | bytes | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """The first frame of an image as RGB, as displayed (EXIF orientation applied), alpha
    composited on white. With `draft_size` (width, height as displayed), a JPEG is decoded at
    the smallest DCT scale (1/8, 1/4, 1/2) that still gives at least that size. Raises
    ImageDecodeError with the status and reason to record."""
    fd, st = _open_regular(path)
    try:
        with open(fd, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _load_rgb(fp, st.st_size, max_pixels, draft_size)
    except ImageDecodeError:
        raise
    except Exception as err:  # the caption job records it and goes on to the next image
        raise ImageDecodeError("unreadable", f"unexpected {type(err).__name__}: {err}") from None


def _load_rgb(
    fp: IO[bytes], size: int, max_pixels: int, draft_size: tuple[int, int] | None
) -> Image.Image:
    if size == 0:
        raise ImageDecodeError("unsupported", "not an image: empty file")
    im = _open_image(fp, max_pixels)
    width, height = im.size
    _check_pixels(width, height, max_pixels)
    orientation = _orientation(im)
    if draft_size and im.format in _JPEG_FORMATS:
        # The draft box is in stored pixels; the requested size is as displayed.
        wanted = draft_size[::-1] if orientation >= 5 else draft_size
        im.draft(im.mode, (max(1, wanted[0]), max(1, wanted[1])))
    _decode(im)
    rgb = _to_rgb(im)
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


# Opening and reading ------------------------------------------------------------------------


def _os_reason(err: OSError) -> str:
    return _ERRNO_REASONS.get(err.errno) or f"cannot read: {err.strerror or err}"


def _open_regular(path: str | bytes | os.PathLike) -> tuple[int, os.stat_result]:
    """An fd open for reading and its fstat, or ImageDecodeError for anything but a file."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        status = "missing" if err.errno == errno.ENOENT else "unreadable"
        raise ImageDecodeError(status, _os_reason(err)) from None
    try:
        st = os.fstat(fd)
    except OSError as err:
        os.close(fd)
        raise ImageDecodeError("unreadable", _os_reason(err)) from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = _NOT_REGULAR.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ImageDecodeError("unreadable", kind)
    return fd, st


def _read(fd: int, expected_size: int) -> _Content:
    """The file's hash, and its bytes when it is small. One read() for a file whose fstat size
    is under a chunk; a file that grew or came back short meanwhile is streamed from the start."""
    if expected_size < CHUNK_SIZE:
        data = os.read(fd, expected_size + 1)
        if len(data) == expected_size:
            return _Content(len(data), hashlib.sha256(data).hexdigest(), data, data[-_TAIL:])
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
        tail = (tail + bytes(chunk[-_TAIL:]))[-_TAIL:]
        size += n
    return _Content(size, hasher.hexdigest(), None, tail)


# Probing --------------------------------------------------------------------------------------


def _probe_open_file(fd: int, st: os.stat_result, max_pixels: int, decode: bool) -> Probe:
    try:
        content = _read(fd, st.st_size)
    except OSError as err:
        return Probe(status="unreadable", reason=_os_reason(err), mtime_ns=st.st_mtime_ns)
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
        _check_pixels(width, height, max_pixels)
    except ImageDecodeError as err:
        return Probe(status=err.status, reason=err.reason, **known, **facts)
    return Probe(status="ok", **known, **facts)


def _inspect(fp: IO[bytes], content: _Content, facts: _Facts, max_pixels: int, decode: bool):
    """Header facts into `facts`, then a verification of the data; raises ImageDecodeError."""
    im = _open_image(fp, max_pixels)
    facts.format, facts.mode = im.format, im.mode
    width, height = im.size
    orientation = _orientation(im)
    facts.width, facts.height = (height, width) if orientation >= 5 else (width, height)
    _check_pixels(width, height, max_pixels)
    try:
        facts.frames = int(getattr(im, "n_frames", 1))  # GIF walks its frames; TIFF its IFDs
    except Exception as err:
        raise ImageDecodeError("unreadable", _decode_reason(im.format, err)) from None
    if im.format in _JPEG_FORMATS:
        if decode or not content.tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
            im.draft("L" if im.mode == "RGB" else im.mode, (1, 1))  # 1/8 scale, luma only
            _decode(im)
    elif im.format == "PNG":
        _decode(im, verify=True)
        if decode:
            fp.seek(0)  # verify() leaves the image unusable; Pillow says to reopen
            _decode(_open_image(fp, max_pixels))
    elif decode or im.format != "WEBP":  # WebP's open() has already demuxed the whole file
        _decode(im)


# Shared by probe and load_rgb -----------------------------------------------------------------


def _open_image(fp: IO[bytes], max_pixels: int) -> Image.Image:
    """Image.open with its failures classified: not an image, a known format's corrupt header,
    or a header over the pixel limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and 2 * limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = -(-max_pixels // 2)  # only ever raised; see the module notes
    try:
        return Image.open(fp)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError("too_large", _bomb_reason(err, max_pixels)) from None
    except UnidentifiedImageError:
        fp.seek(0)
        kind = _sniff(fp.read(_TAIL))
        if kind is None:
            raise ImageDecodeError("unsupported", "not an image: content not recognised") from None
        if kind == "HEIF":
            raise ImageDecodeError("unsupported", "HEIF image: no decoder installed") from None
        raise ImageDecodeError("unreadable", f"corrupt {kind}: header cannot be parsed") from None
    except Exception as err:  # plugins reject headers with OSError, ValueError, ...
        fp.seek(0)
        raise ImageDecodeError("unreadable", _decode_reason(_sniff(fp.read(_TAIL)), err)) from None


def _sniff(head: bytes) -> str | None:
    """The format a file's first bytes claim, for the formats whose magic is unambiguous:
    a file that claims one and fails to open is a damaged image, not a non-image."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1"):
        return "HEIF"
    return None


def _bomb_reason(err: Exception, max_pixels: int | None) -> str:
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = f"{found.group(1)} pixels" if found else "too many pixels"
    limit = f"limit {max_pixels}" if max_pixels else "Pillow's limit"
    return f"{pixels} > {limit} (Pillow's decompression-bomb guard)"


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        reason = f"{width}x{height} = {width * height} pixels > limit {max_pixels}"
        raise ImageDecodeError("too_large", reason)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1-8 as Pillow's getexif() finds it (EXIF, else XMP); 1 when absent or
    unreadable, since bad EXIF does not spoil the pixels."""
    try:
        if im.format == "PNG" and "exif" not in im.info:
            value = _png_text_orientation(im.info)
        else:
            value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _png_text_orientation(info: dict) -> int:
    """Pillow's PNG getexif() decodes the whole image first, to look for an eXIf chunk after the
    data; the PNG specification puts it before, where open() has already seen it. So read the
    other two places Pillow looks, text chunks that open() has also seen, the same way it does."""
    raw = info.get("Raw profile type exif")  # how ImageMagick stores EXIF in PNG
    if raw:
        exif = Image.Exif()
        exif.load(bytes.fromhex("".join(raw.split("\n")[3:])))
        if ORIENTATION_TAG in exif:
            return exif[ORIENTATION_TAG]
    return xmp_orientation(info.get("XML:com.adobe.xmp"))


def _decode(im: Image.Image, *, verify: bool = False) -> None:
    """im.load() (or im.verify()) with its failures classified."""
    try:
        if verify:
            im.verify()
        else:
            im.load()
    except Image.DecompressionBombError as err:
        raise ImageDecodeError("too_large", _bomb_reason(err, None)) from None
    except Exception as err:
        raise ImageDecodeError("unreadable", _decode_reason(im.format, err)) from None


def _decode_reason(fmt: str | None, err: Exception) -> str:
    if isinstance(err, OSError) and err.errno is not None:
        return _os_reason(err)  # the disk failed, not the image
    if isinstance(err, MemoryError):
        return "out of memory while decoding"
    message = str(err) or type(err).__name__
    damage = "truncated" if isinstance(err, EOFError) or "truncat" in message.lower() else "corrupt"
    return f"{damage} {fmt or 'image'}: {message}"


# Conversion to RGB ----------------------------------------------------------------------------

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _SIXTEEN_BIT or im.mode in ("I", "F"):
        im = _grey_to_8bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return _on_white(im)
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")  # CMYK, YCbCr, P, L, 1, ...
    except ValueError:
        raise ImageDecodeError("unsupported", f"cannot convert mode {im.mode} to RGB") from None


def _grey_to_8bit(im: Image.Image) -> Image.Image:
    """Scale deep greyscale to 8 bits by its nominal range: convert("L") would clip every value
    above 255 to white. 16-bit modes use 0-65535; "I" and "F" have no declared depth, so their
    values decide: 0-255 is taken as 8-bit, "I" up to 65535 as 16-bit, "F" up to 1.0 as unit
    range, and anything else is stretched from its minimum to its maximum."""
    if im.mode in _SIXTEEN_BIT:
        im, low, high = im.convert("I"), 0, 65535
    else:
        low, high = im.getextrema()
        if low >= 0 and high <= 255 and not (im.mode == "F" and high <= 1):
            low, high = 0, 255
        elif low >= 0 and im.mode == "I" and high <= 65535:
            low, high = 0, 65535
        elif low >= 0 and im.mode == "F" and high <= 1:
            low, high = 0, 1
    scale = 255 / (high - low) if high > low else 0
    out = im.point(lambda value: value * scale - low * scale).convert("L")
    out.info.pop("transparency", None)  # a 16-bit transparent value means nothing in 8 bits
    return out


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")  # also resolves a palette's or a colour key's transparency
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba)
    return background
