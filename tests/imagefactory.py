"""Writers of odd image files for tests and benchmarks: one function per oddity.

Every writer takes the folder to write into (and optionally a file name), writes one file and
returns its path. Output is deterministic: the same call writes the same bytes, so a test can
pin a hash or a size. Corrupt and hostile files are made by editing the bytes of a valid file
(or by writing the PNG chunks by hand), never by allocating what the file claims to hold: the
100000x100000 PNG is 74 bytes on disk.

`write_many` makes many small, distinct images quickly for benchmarks; the content is a smooth
gradient plus seeded noise, so the files compress like photos rather than like flat colour.
"""

from __future__ import annotations

import functools
import os
import random
import struct
import zlib
from pathlib import Path

from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
PathLike = str | os.PathLike


def _path(folder: PathLike, name: str) -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Plain images --------------------------------------------------------------------------------


def plain_image(
    folder: PathLike,
    name: str = "plain.png",
    *,
    size: tuple[int, int] = (32, 24),
    color: tuple[int, int, int] = RED,
    fmt: str | None = None,
) -> Path:
    """A flat-colour RGB image; the format follows the extension unless `fmt` is given."""
    path = _path(folder, name)
    Image.new("RGB", size, color).save(
        path, fmt, **({"quality": 95} if _is_jpeg(path, fmt) else {})
    )
    return path


def rgb_jpeg(folder: PathLike, name: str = "plain.jpg", **kwargs) -> Path:
    return plain_image(folder, name, fmt="JPEG", **kwargs)


def rgb_png(folder: PathLike, name: str = "plain.png", **kwargs) -> Path:
    return plain_image(folder, name, fmt="PNG", **kwargs)


def one_pixel(folder: PathLike, name: str = "one_pixel.png") -> Path:
    return plain_image(folder, name, size=(1, 1))


def wide_strip(
    folder: PathLike, name: str = "strip.png", size: tuple[int, int] = (12000, 1)
) -> Path:
    """A 12000x1 image: extreme aspect ratio, which breaks naive resize and DCT-scale logic."""
    return plain_image(folder, name, size=size)


def _is_jpeg(path: Path, fmt: str | None) -> bool:
    return (fmt or "").upper() == "JPEG" or path.suffix.lower() in (".jpg", ".jpeg")


# Not images ----------------------------------------------------------------------------------


def empty_file(folder: PathLike, name: str = "empty.jpg") -> Path:
    path = _path(folder, name)
    path.write_bytes(b"")
    return path


def text_as_jpg(folder: PathLike, name: str = "notes.jpg") -> Path:
    path = _path(folder, name)
    path.write_text("These are meeting notes, not a photo.\n" * 20, encoding="utf-8")
    return path


def random_bytes(folder: PathLike, name: str = "blob.bin", size: int = 3 << 20) -> Path:
    """Seeded random bytes: not an image, and larger than one read chunk by default."""
    path = _path(folder, name)
    path.write_bytes(random.Random(size).randbytes(size))
    return path


# Corrupt images ------------------------------------------------------------------------------


def truncated_jpeg(folder: PathLike, name: str = "truncated.jpg", keep: float = 0.5) -> Path:
    """A valid header but only `keep` of the entropy-coded data after the start of scan."""
    full = _noise_image((96, 64), seed=1)
    path = _path(folder, name)
    full.save(path, "JPEG", quality=90)
    data = path.read_bytes()
    start_of_scan = data.index(b"\xff\xda")
    path.write_bytes(data[: start_of_scan + int((len(data) - start_of_scan) * keep)])
    return path


def bad_crc_png(folder: PathLike, name: str = "bad_crc.png", chunk: bytes = b"IDAT") -> Path:
    """A PNG whose pixel data is intact but whose `chunk` CRC is wrong (IDAT: only a real
    verification of the data chunks can notice; IHDR: the header itself is rejected)."""
    path = _path(folder, name)
    _noise_image((48, 32), seed=2).save(path, "PNG")
    data = bytearray(path.read_bytes())
    at = data.index(chunk) - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    crc_at = at + 8 + length
    data[crc_at] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def truncated_png(folder: PathLike, name: str = "truncated.png", keep: float = 0.6) -> Path:
    """The first `keep` of a PNG's bytes: the IDAT stream stops part way, and IEND is missing."""
    path = _path(folder, name)
    _noise_image((48, 32), seed=3).save(path, "PNG")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def huge_declared_png(
    folder: PathLike, name: str = "bomb.png", size: tuple[int, int] = (100_000, 100_000)
) -> Path:
    """A PNG whose IHDR declares `size` greyscale pixels, with a tiny IDAT: a decompression
    bomb's header, written by hand so that nothing of that size is ever allocated."""
    ihdr = struct.pack(">IIBBBBB", size[0], size[1], 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path = _path(folder, name)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    return path


# Odd modes -----------------------------------------------------------------------------------


def cmyk_jpeg(
    folder: PathLike,
    name: str = "cmyk.jpg",
    size: tuple[int, int] = (32, 24),
    color: tuple[int, int, int, int] = (0, 255, 255, 0),
) -> Path:
    """CMYK JPEG, pure red by default (no cyan, full magenta and yellow, no black)."""
    path = _path(folder, name)
    Image.new("CMYK", size, color).save(path, "JPEG", quality=95)
    return path


def png16(
    folder: PathLike, name: str = "grey16.png", size: tuple[int, int] = (16, 16), value: int = 32768
) -> Path:
    """16-bit greyscale PNG; the default is mid-grey, which must become ~128 in 8 bits, not 255."""
    path = _path(folder, name)
    Image.new("I;16", size, value).save(path, "PNG")
    return path


def palette_png_transparent(folder: PathLike, name: str = "palette.png") -> Path:
    """Palette PNG, 32x16: the left half is index 0 (black, declared transparent in tRNS), the
    right half is index 1 (red). Composited on white, the left half must come out white."""
    im = Image.new("P", (32, 16), 0)
    im.putpalette([0, 0, 0, *RED])
    im.paste(1, (16, 0, 32, 16))
    path = _path(folder, name)
    im.save(path, "PNG", transparency=0)
    return path


def rgba_png(folder: PathLike, name: str = "alpha.png", alpha: int = 0) -> Path:
    """RGBA PNG of black pixels with the given alpha (0: fully transparent)."""
    path = _path(folder, name)
    Image.new("RGBA", (16, 16), (0, 0, 0, alpha)).save(path, "PNG")
    return path


def animated_gif(
    folder: PathLike, name: str = "animated.gif", colors: tuple = (RED, (0, 255, 0), BLUE)
) -> Path:
    """An animated GIF with one flat frame per colour; the first frame is the first colour."""
    frames = [Image.new("RGB", (24, 16), color) for color in colors]
    path = _path(folder, name)
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def multipage_tiff(
    folder: PathLike, name: str = "pages.tif", colors: tuple = (BLUE, RED, (0, 255, 0))
) -> Path:
    """A multi-page TIFF with one flat page per colour; page one is the first colour."""
    pages = [Image.new("RGB", (20, 30), color) for color in colors]
    path = _path(folder, name)
    pages[0].save(path, "TIFF", save_all=True, append_images=pages[1:])
    return path


def exif_rotated_jpeg(
    folder: PathLike,
    name: str = "rotated.jpg",
    size: tuple[int, int] = (64, 32),
    orientation: int = 6,
) -> Path:
    """A JPEG stored `size` wide with EXIF orientation 6 (display rotated 90 degrees clockwise).
    The stored left half is red and the right half blue, so once displayed (32x64) the top is
    red and the bottom blue."""
    im = Image.new("RGB", size, BLUE)
    im.paste(RED, (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _path(folder, name)
    im.save(path, "JPEG", quality=95, exif=exif)
    return path


# Odd files for the directory walk ------------------------------------------------------------


def non_utf8_name(folder: PathLike) -> bytes:
    """A small PNG whose file name is not valid UTF-8; returns the path as bytes."""
    path = os.path.join(os.fsencode(folder), b"caf\xe9-\xff.png")
    Image.new("RGB", (8, 8), RED).save(path, "PNG")
    return path


def symlink_loop(folder: PathLike, name: str = "loop") -> Path:
    """A folder holding a symbolic link to itself (loop/again -> loop): a walk that follows
    links without remembering where it has been never ends."""
    path = _path(folder, name)
    path.mkdir(exist_ok=True)
    link = path / "again"
    if not link.is_symlink():
        link.symlink_to(path, target_is_directory=True)
    return path


def fifo(folder: PathLike, name: str = "pipe.jpg") -> Path:
    """A named pipe: opening it for reading the ordinary way blocks until a writer appears."""
    path = _path(folder, name)
    os.mkfifo(path)
    return path


# Many images for benchmarks ------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _gradient(size: tuple[int, int]) -> Image.Image:
    ramp = Image.linear_gradient("L").rotate(90).resize(size)
    flipped = ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return Image.merge("RGB", (ramp, flipped, Image.new("L", size, 96)))


def _noise_image(size: tuple[int, int], seed: int | str, amount: float = 0.25) -> Image.Image:
    """A colour gradient blended with seeded noise drawn at a quarter of the resolution and
    smoothed up: detail that compresses about as well as a photo, unlike per-pixel noise."""
    width, height = max(1, size[0] // 4), max(1, size[1] // 4)
    noise = Image.frombytes(
        "RGB", (width, height), random.Random(seed).randbytes(width * height * 3)
    )
    return Image.blend(_gradient(size), noise.resize(size, Image.Resampling.BILINEAR), amount)


def noisy_image(
    folder: PathLike,
    name: str = "noisy.jpg",
    size: tuple[int, int] = (128, 96),
    fmt: str = "JPEG",
    seed: int = 0,
    **options,
) -> Path:
    """A photo-like image (gradient plus seeded noise); `options` go to Pillow's save()."""
    path = _path(folder, name)
    _noise_image(size, seed=seed).save(path, fmt, **options)
    return path


def write_many(
    folder: PathLike,
    n: int,
    size: tuple[int, int] = (128, 96),
    fmt: str = "JPEG",
    *,
    start: int = 0,
) -> list[Path]:
    """Write `n` distinct images of `size` in `fmt` ("JPEG" or "PNG") named img_<index>.jpg,
    for indices from `start`. The noise is seeded by the index, so files differ from each other
    (and from another call's, given a different `start`) and reruns write the same bytes."""
    extension = {"JPEG": ".jpg", "PNG": ".png"}.get(fmt.upper(), "." + fmt.lower())
    # PNG at level 1: Pillow's default level takes ~5x longer for files only ~15% smaller.
    options = {"JPEG": {"quality": 85}, "PNG": {"compress_level": 1}}.get(fmt.upper(), {})
    return [
        noisy_image(folder, f"img_{index:06d}{extension}", size, fmt, seed=index, **options)
        for index in range(start, start + n)
    ]
