"""One image's pixels as RGB for the model (`load_rgb`), and the careful opening both it and
the scan's probe (probe.py) share: one non-blocking open of a regular file, Pillow's open with its
failures classified, the pixel limit, EXIF orientation, decoding with its failures classified.

Every failure is an `ImageDecodeError` with a status and a one-line reason, never a stray
exception. Statuses: "ok"; "unreadable" (I/O error, permission, not a regular file, truncated or
corrupt data); "unsupported" (not an image we can decode); "too_large" (more pixels than
`max_pixels`, judged from the header before decoding); "missing" (the file is gone).

- Pillow's decompression-bomb guard is process-wide (an error above 2 * Image.MAX_IMAGE_PIXELS).
  DEFAULT_MAX_PIXELS equals that threshold; a larger `max_pixels` raises Pillow's limit to match
  (never lowers it); a DecompressionBombError that still escapes is "too_large".
- Pillow's warnings are muted per call, since a library must not print. `catch_warnings` is
  process-wide state, so decode in processes (as the caption job's loader does), not threads.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from typing import IO, Literal

from PIL import Image, UnidentifiedImageError

from labeler.errors import LabelerError
from labeler.files.headers import ORIENTATION_TAG, xmp_orientation

Status = Literal["ok", "unreadable", "unsupported", "too_large", "missing"]

# Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS, about 13400x13400), so by default both
# guards agree and Pillow's global is left alone.
DEFAULT_MAX_PIXELS = 178_956_970
NO_SUCH_FILE = "no such file"  # probe's reason for a file that vanished after the walk

TAIL = 64  # bytes kept from a file's start or end, for signatures and end-of-image markers
JPEG_FORMATS = ("JPEG", "MPO")
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
    fd, st = open_regular(path)
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
    im = open_image(fp, max_pixels)
    width, height = im.size
    check_pixels(width, height, max_pixels)
    orientation = exif_orientation(im)
    if draft_size and im.format in JPEG_FORMATS:
        # The draft box is in stored pixels; the requested size is as displayed.
        wanted = draft_size[::-1] if orientation >= 5 else draft_size
        im.draft(im.mode, (max(1, wanted[0]), max(1, wanted[1])))
    decode_image(im)
    rgb = _to_rgb(im)
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


# Opening ------------------------------------------------------------------------------------------


def os_reason(err: OSError) -> str:
    return _ERRNO_REASONS.get(err.errno) or f"cannot read: {err.strerror or err}"


def open_regular(path: str | bytes | os.PathLike) -> tuple[int, os.stat_result]:
    """An fd open for reading and its fstat, or ImageDecodeError for anything but a file."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        status = "missing" if err.errno == errno.ENOENT else "unreadable"
        raise ImageDecodeError(status, os_reason(err)) from None
    try:
        st = os.fstat(fd)
    except OSError as err:
        os.close(fd)
        raise ImageDecodeError("unreadable", os_reason(err)) from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = _NOT_REGULAR.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ImageDecodeError("unreadable", kind)
    return fd, st


# Shared by probe and load_rgb -----------------------------------------------------------------


def open_image(fp: IO[bytes], max_pixels: int) -> Image.Image:
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
        kind = _sniff(fp.read(TAIL))
        if kind is None:
            raise ImageDecodeError("unsupported", "not an image: content not recognised") from None
        if kind == "HEIF":
            raise ImageDecodeError("unsupported", "HEIF image: no decoder installed") from None
        raise ImageDecodeError("unreadable", f"corrupt {kind}: header cannot be parsed") from None
    except Exception as err:  # plugins reject headers with OSError, ValueError, ...
        fp.seek(0)
        raise ImageDecodeError("unreadable", decode_reason(_sniff(fp.read(TAIL)), err)) from None


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


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        reason = f"{width}x{height} = {width * height} pixels > limit {max_pixels}"
        raise ImageDecodeError("too_large", reason)


def exif_orientation(im: Image.Image) -> int:
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


def decode_image(im: Image.Image, *, verify: bool = False) -> None:
    """im.load() (or im.verify()) with its failures classified."""
    try:
        if verify:
            im.verify()
        else:
            im.load()
    except Image.DecompressionBombError as err:
        raise ImageDecodeError("too_large", _bomb_reason(err, None)) from None
    except Exception as err:
        raise ImageDecodeError("unreadable", decode_reason(im.format, err)) from None


def decode_reason(fmt: str | None, err: Exception) -> str:
    if isinstance(err, OSError) and err.errno is not None:
        return os_reason(err)  # the disk failed, not the image
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
