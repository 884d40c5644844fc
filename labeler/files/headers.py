"""PNG and JPEG headers read straight from the bytes: the scan's fast path.

Pillow parses headers in Python at two to four times the cost of hashing a small file, so a PNG
or JPEG already in memory is read here instead. Same facts and same structure checks as the
Pillow path in probe.py (every PNG CRC to IEND; a JPEG's EOI). Whatever these functions are
unsure of returns None, and Pillow decides: APNG and MPO (their frames), EXIF in text chunks,
compressed text, unusual markers, chunk sizes Pillow rejects, anything incomplete or damaged; so
the reasons given for failures are always Pillow's. A differential test in tests/test_files.py
pins both paths to the same answers.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

ORIENTATION_TAG = 0x0112
_TAIL = 64  # bytes of a file's end in which a JPEG's end-of-image marker must lie


@dataclass(frozen=True)
class Header:
    format: str
    mode: str
    width: int
    height: int
    orientation: int = 1


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {  # (bit depth, colour type) -> Pillow's mode, as in PngImagePlugin._MODES
    (1, 0): "1", (2, 0): "L", (4, 0): "L", (8, 0): "L", (16, 0): "I;16",
    (8, 2): "RGB", (16, 2): "RGB", (1, 3): "P", (2, 3): "P", (4, 3): "P", (8, 3): "P",
    (8, 4): "LA", (16, 4): "RGBA", (8, 6): "RGBA", (16, 6): "RGBA",
}  # fmt: skip
# Chunks Pillow parses before the image data, and the shortest body it accepts for each.
_PNG_MIN_LENGTH = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"iCCP": 2}
_PNG_TRNS_MIN = {"1": 2, "L": 2, "I;16": 2, "RGB": 6}
_PNG_ASK_PILLOW = (b"acTL", b"fcTL", b"fdAT", b"zTXt", b"iTXt")
_JPEG_SOF = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman frames
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}  # by component count, as Pillow's SOF()


def fast_header(data: bytes) -> Header | None:
    try:
        if data.startswith(_PNG_SIGNATURE):
            return _png_header(data)
        if data.startswith(b"\xff\xd8\xff"):
            return _jpeg_header(data)
    except (struct.error, IndexError, ValueError):
        pass  # malformed in a way the checks did not foresee: Pillow decides
    return None


def _png_header(data: bytes) -> Header | None:
    length, kind, width, height, depth, colour, _, filtering, _ = struct.unpack_from(
        ">I4sIIBBBBB", data, 8
    )
    mode = _PNG_MODES.get((depth, colour))
    if kind != b"IHDR" or length < 13 or mode is None or filtering or not width or not height:
        return None
    view, pos, orientation, before_data = memoryview(data), 8, 1, True
    while True:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        body = view[pos + 8 : end - 4]
        if (
            end > len(data)
            or zlib.crc32(view[pos + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]
        ):
            return None
        if kind == b"IEND":
            return None if before_data else Header("PNG", mode, width, height, orientation)
        if kind == b"IDAT":
            before_data = False
        elif before_data:
            if kind in _PNG_ASK_PILLOW or length < _PNG_MIN_LENGTH.get(kind, 0):
                return None
            if kind == b"tRNS" and length < _PNG_TRNS_MIN.get(mode, 0):
                return None
            if kind == b"iCCP" and bytes(body[:81]).partition(b"\0")[2][:1] != b"\0":
                return None  # Pillow refuses a compression method other than 0
            if kind == b"tEXt" and bytes(body[:21]) == b"Raw profile type exif":
                return None
            if kind == b"eXIf":
                value = _exif_orientation(bytes(body))
                if value is None:
                    return None
                orientation = value or 1
        pos = end


def _jpeg_header(data: bytes) -> Header | None:
    if not data[-_TAIL:].rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # cut short, or data after the image: decoding decides
    pos, size, mode, exif, xmp = 2, None, None, None, None
    while data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            return None
        if marker == 0xDA:  # start of scan: the header is over
            orientation = _jpeg_orientation(exif, xmp)
            if size is None or orientation is None:
                return None
            return Header("JPEG", mode, *size, orientation)
        if marker in _JPEG_SOF:
            if size is not None or body[0] != 8 or body[5] not in _JPEG_MODES:
                return None
            height, width = struct.unpack_from(">HH", body, 1)
            size, mode = (width, height), _JPEG_MODES[body[5]]
            if not width or not height:
                return None
        elif marker == 0xDB and not _dqt_ok(body):
            return None
        elif marker == 0xE1 and body.startswith(b"Exif\0\0"):
            exif = body[6:] if exif is None else exif  # Pillow reads the first one
        elif marker == 0xE1 and body.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            xmp = body  # Pillow keeps the last one
        elif marker == 0xE2 and body.startswith(b"MPF\0"):
            return None  # a multi-picture file: Pillow counts its frames
        elif marker in (0xE0, 0xEE) and len(body) < 7:
            return None  # Pillow reads a JFIF or Adobe segment's version from bytes 5-6
        elif not (marker in (0xC4, 0xDB, 0xDD, 0xFE) or 0xE0 <= marker <= 0xEF):
            return None  # other frame types and markers: Pillow's parser handles them
        pos += 2 + length
    return None


def _jpeg_orientation(exif: bytes | None, xmp: bytes | None) -> int | None:
    """As Pillow's getexif(): EXIF's orientation, else one in XMP; 1 when neither is 1-8."""
    value = 0 if exif is None else _exif_orientation(exif)
    if value == 0:
        value = xmp_orientation(xmp)
    return None if value is None else value if 1 <= value <= 8 else 1


def _dqt_ok(body: bytes) -> bool:
    """Each quantization table is 1 + 64 bytes (8-bit) or 1 + 128 (16-bit), as Pillow checks."""
    pos = 0
    while pos < len(body):
        pos += 65 if body[pos] < 16 else 129
    return pos == len(body)


def _exif_orientation(tiff: bytes) -> int | None:
    """Orientation 1-8 from IFD0 of an EXIF (TIFF) block; 0 when absent; None when the block
    or the value is unusual (Pillow then reads it)."""
    order = {b"II*\0": "<", b"MM\0*": ">"}.get(tiff[:4])
    if order is None:
        return None
    (offset,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind, n, value = struct.unpack_from(order + "HHIH", tiff, entry)
        if tag == ORIENTATION_TAG:
            return value if kind == 3 and n == 1 and 1 <= value <= 8 else None
    return 0


def xmp_orientation(xmp: str | bytes | None) -> int:
    if not xmp:
        return 0
    text = xmp if isinstance(xmp, bytes) else xmp.encode("utf-8", "replace")
    found = re.search(rb'tiff:Orientation(="|>)([0-9])', text)
    return int(found[2]) if found else 0
