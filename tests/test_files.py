"""probe() and load_rgb() on every odd file imagefactory makes, plus the failure paths.

The "unreadable file" case is tested for real, also as root (where chmod 000 does not stop a
read): a forked child drops to uid/gid 65534 and probes a mode-000 file next to a readable one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import signal
import sys
import warnings

import imagefactory as factory
import PIL.ImageFile
import pytest
from asnobody import run_as_nobody
from PIL import Image, ImageChops, ImageOps

from labeler.errors import LabelerError
from labeler.files import probe as probing
from labeler.files.decode import ImageDecodeError, load_rgb
from labeler.files.probe import NO_SUCH_FILE, Probe, hash_file, probe

STATUSES = {"ok", "unreadable", "unsupported", "too_large"}


def _bomb(folder):
    return factory.huge_declared_png(folder)


def _bad_ihdr(folder):
    return factory.bad_crc_png(folder, "bad_ihdr.png", chunk=b"IHDR")


# (writer, status, format, displayed width, height, mode, frames, words the reason must hold)
CASES = [
    (factory.empty_file, "unsupported", None, None, None, None, None, "empty file"),
    (factory.text_as_jpg, "unsupported", None, None, None, None, None, "not recognised"),
    (factory.truncated_jpeg, "unreadable", "JPEG", 96, 64, "RGB", 1, "truncated JPEG"),
    (factory.bad_crc_png, "unreadable", "PNG", 48, 32, "RGB", 1, "corrupt PNG"),
    (_bad_ihdr, "unreadable", None, None, None, None, None, "corrupt PNG"),
    (factory.truncated_png, "unreadable", "PNG", 48, 32, "RGB", 1, "truncated PNG"),
    (_bomb, "too_large", "PNG", 100_000, 100_000, "L", 1, "pixels > limit"),
    (factory.cmyk_jpeg, "ok", "JPEG", 32, 24, "CMYK", 1, ""),
    (factory.png16, "ok", "PNG", 16, 16, "I;16", 1, ""),
    (factory.palette_png_transparent, "ok", "PNG", 32, 16, "P", 1, ""),
    (factory.rgba_png, "ok", "PNG", 16, 16, "RGBA", 1, ""),
    (factory.animated_gif, "ok", "GIF", 24, 16, "P", 3, ""),
    (factory.multipage_tiff, "ok", "TIFF", 20, 30, "RGB", 3, ""),
    (factory.exif_rotated_jpeg, "ok", "JPEG", 32, 64, "RGB", 1, ""),
    (factory.one_pixel, "ok", "PNG", 1, 1, "RGB", 1, ""),
    (factory.wide_strip, "ok", "PNG", 12000, 1, "RGB", 1, ""),
    (factory.rgb_jpeg, "ok", "JPEG", 32, 24, "RGB", 1, ""),
    (factory.rgb_png, "ok", "PNG", 32, 24, "RGB", 1, ""),
]


@pytest.mark.parametrize("decode", [False, True], ids=["structure", "decode"])
@pytest.mark.parametrize("case", CASES, ids=[case[0].__name__ for case in CASES])
def test_probe_classifies_each_odd_file(tmp_path, case, decode):
    writer, status, fmt, width, height, mode, frames, words = case
    path = writer(tmp_path)
    result = probe(path, decode=decode)
    assert result.status == status, result
    assert words in result.reason
    if status == "ok":
        assert result.reason == ""
    data = path.read_bytes()
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert result.mtime_ns == os.stat(path).st_mtime_ns
    if status == "too_large" and decode:
        # Pillow's own guard rejects it at open(), before the size is known.
        assert "pixels > limit" in result.reason
        return
    assert (result.format, result.width, result.height) == (fmt, width, height)
    assert (result.mode, result.frames) == (mode, frames)


def test_huge_declared_png_is_rejected_without_decoding(tmp_path, monkeypatch):
    path = factory.huge_declared_png(tmp_path)
    assert path.stat().st_size < 200
    decoded = []
    real_load = PIL.ImageFile.ImageFile.load

    def counting_load(image):  # type: ignore[no-untyped-def]
        decoded.append(image.size)
        return real_load(image)

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", counting_load)
    for decode in (False, True):
        assert probe(path, decode=decode).status == "too_large"
        with pytest.raises(ImageDecodeError) as caught:
            load_rgb(path)
        assert caught.value.status == "too_large"
    assert decoded == []  # not one pixel of the 10^10 was decoded


def test_max_pixels_is_the_limit_in_both_directions(tmp_path, monkeypatch):
    path = factory.rgb_png(tmp_path, size=(64, 64))  # 4096 pixels
    assert probe(path, max_pixels=4095).status == "too_large"
    assert "64x64 = 4096 pixels > limit 4095" in probe(path, max_pixels=4095).reason
    # Pillow's process-wide guard below our limit is raised to match it, never leaks.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert probe(path, max_pixels=10_000, decode=True).status == "ok"
    assert load_rgb(path, max_pixels=10_000).size == (64, 64)


def test_a_decompression_bomb_error_from_pillow_is_too_large(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        message = "Image size (5000 pixels) exceeds limit of 2000 pixels, could be decompression"
        raise Image.DecompressionBombError(message)

    path = factory.rgb_png(tmp_path)
    monkeypatch.setattr(Image, "open", refuse)
    rejected = probe(path, decode=True)
    assert (rejected.status, rejected.sha256) == (
        "too_large",
        hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    assert rejected.reason.startswith("5000 pixels > limit")
    with pytest.raises(ImageDecodeError) as caught:
        load_rgb(path)
    assert caught.value.status == "too_large"


def test_pillow_warnings_are_not_shown(tmp_path, capsys):
    # 100 million declared pixels: over Pillow's warning threshold, under its error threshold.
    path = factory.huge_declared_png(tmp_path, size=(10_000, 10_000))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert probe(path, max_pixels=50_000_000, decode=True).status == "too_large"
        with pytest.raises(ImageDecodeError):
            load_rgb(path, max_pixels=50_000_000)
        probe(factory.bad_crc_png(tmp_path, "b.png", chunk=b"IHDR"), decode=True)
    assert shown == []
    assert capsys.readouterr() == ("", "")


def test_webp_and_heif(tmp_path):
    webp = factory.noisy_image(tmp_path, "photo.webp", (48, 32), "WEBP", quality=80)
    assert (probe(webp).status, probe(webp).format, probe(webp).width) == ("ok", "WEBP", 48)
    assert load_rgb(webp).size == (48, 32)
    cut = tmp_path / "cut.webp"
    cut.write_bytes(webp.read_bytes()[:-40])
    assert probe(cut).status == "unreadable"
    assert probe(cut).reason.startswith("corrupt WEBP")
    heif = tmp_path / "phone.heic"
    heif.write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(100))
    assert (probe(heif).status, probe(heif).reason) == (
        "unsupported",
        "HEIF image: no decoder installed",
    )


# Hashing and large files -----------------------------------------------------------------------


def test_large_files_are_hashed_in_chunks_and_checked(tmp_path):
    blob = factory.random_bytes(tmp_path, size=probing.CHUNK_SIZE * 3 + 5)
    png = factory.noisy_image(tmp_path, "big.png", (1024, 768), "PNG", compress_level=1)
    jpeg = factory.noisy_image(tmp_path, "big.jpg", (1600, 1200), "JPEG", quality=100)
    cut = tmp_path / "big_cut.png"
    cut.write_bytes(png.read_bytes()[: probing.CHUNK_SIZE + 1000])
    expected = {blob: "unsupported", png: "ok", jpeg: "ok", cut: "unreadable"}
    for path, status in expected.items():
        data = path.read_bytes()
        assert len(data) > probing.CHUNK_SIZE, path
        result = probe(path)
        assert result.status == status, result
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert hash_file(path) == (len(data), result.sha256)
    assert probe(jpeg).width == 1600
    assert "truncated PNG" in probe(cut).reason


def test_probe_agrees_with_hashlib_on_every_odd_file(tmp_path):
    for case in CASES:
        path = case[0](tmp_path / case[0].__name__)
        data = path.read_bytes()
        assert probe(path).sha256 == hashlib.sha256(data).hexdigest()
        assert hash_file(path) == (len(data), hashlib.sha256(data).hexdigest())


# Files that are not there, not files, or not ours to read --------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX FIFOs and signals")
def test_missing_directory_fifo_and_link_loop(tmp_path):
    loop = tmp_path / "self"
    loop.symlink_to(loop)
    fifo = factory.fifo(tmp_path)
    signal.alarm(10)  # a blocking open of the FIFO would hang here, not fail
    try:
        results = {
            "missing": probe(tmp_path / "gone.jpg"),
            "directory": probe(tmp_path),
            "fifo": probe(fifo),
            "loop": probe(loop),
        }
        with pytest.raises(ImageDecodeError) as caught:
            load_rgb(fifo)
    finally:
        signal.alarm(0)
    assert caught.value.status == "unreadable"
    assert all(result.status == "unreadable" for result in results.values())
    assert results["missing"].reason == NO_SUCH_FILE
    assert results["directory"].reason == "is a directory"
    assert results["fifo"].reason == "not a regular file: named pipe"
    assert "symbolic links" in results["loop"].reason
    assert results["missing"].size is results["missing"].sha256 is None


def _probe_as_nobody(folder, names):
    """(status, reason) of probe() for each name, as nobody with `folder` as working directory."""
    return run_as_nobody(folder, lambda: [(r.status, r.reason) for r in map(probe, names)])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_permission_denied_is_unreadable_even_as_root(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o755)
    locked = factory.rgb_png(folder, "locked.png")
    factory.rgb_png(folder, "open.png").chmod(0o644)
    locked.chmod(0)
    if os.geteuid() == 0:
        results = _probe_as_nobody(folder, ["locked.png", "open.png"])
    else:
        results = [(r.status, r.reason) for r in (probe(locked), probe(folder / "open.png"))]
    assert results == [("unreadable", "permission denied"), ("ok", "")]


def test_os_errors_become_reasons(tmp_path, monkeypatch):
    path = factory.rgb_png(tmp_path)

    def fail_read(fd, size):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(probing, "_read", fail_read)
    result = probe(path)
    assert (result.status, result.reason) == ("unreadable", "I/O error")
    assert result.mtime_ns is not None


def test_probe_never_raises(tmp_path, monkeypatch):
    def explode(*args):
        raise RuntimeError("boom")

    path = factory.rgb_jpeg(tmp_path, "x.jpeg", size=(20, 10))
    monkeypatch.setattr(probing, "fast_header", explode)
    result = probe(path)
    assert (result.status, result.reason) == ("unreadable", "unexpected RuntimeError: boom")
    assert result.sha256 is None


DAMAGEABLE = [
    factory.rgb_jpeg,
    factory.exif_rotated_jpeg,
    factory.cmyk_jpeg,
    factory.rgb_png,
    factory.palette_png_transparent,
    factory.png16,
]


@pytest.mark.parametrize("writer", DAMAGEABLE, ids=[writer.__name__ for writer in DAMAGEABLE])
def test_damaged_copies_are_classified_alike_by_both_paths(tmp_path, writer, monkeypatch):
    """~60 prefixes and ~60 single-byte flips of a file: never an exception, never the safety
    net's "unexpected", and the fast path's verdict equals Pillow's. (Run once over every prefix
    and every byte flipped three ways of eight files, 28,696 copies: no difference.)"""
    data = writer(tmp_path).read_bytes()
    step = max(1, len(data) // 60)
    damaged = [data[:cut] for cut in range(0, len(data), step)]
    damaged += [
        data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1 :] for at in range(0, len(data), step)
    ]
    path = tmp_path / "damaged"
    fields = ("status", "reason", "format", "width", "height", "mode", "frames")
    for content in damaged:
        path.write_bytes(content)
        fast = probe(path)
        with monkeypatch.context() as patch:
            patch.setattr(probing, "fast_header", lambda data: None)
            slow = probe(path)
        assert [getattr(fast, f) for f in fields] == [getattr(slow, f) for f in fields]
        assert fast.sha256 == hashlib.sha256(content).hexdigest()
        for result in (fast, probe(path, decode=True)):
            assert result.status in STATUSES and not result.reason.startswith("unexpected")
        try:
            load_rgb(path, draft_size=(8, 8))
        except ImageDecodeError as err:
            assert err.status in STATUSES and not err.reason.startswith("unexpected")


# The fast header path against Pillow -----------------------------------------------------------


def _variants(folder):
    """Real-world shapes of PNG and JPEG, with whether the fast path should take them."""
    rgb = Image.new("RGB", (40, 30), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 8
    meta = {"dpi": (300, 300), "icc_profile": b"\0" * 128}
    saves = {
        "grey.png": (rgb.convert("L"), {}, True),
        "bilevel.png": (rgb.convert("1"), {}, True),
        "p4.png": (rgb.convert("P"), {"bits": 4}, True),
        "la.png": (rgb.convert("LA"), {}, True),
        "rgba.png": (rgb.convert("RGBA"), {}, True),
        "trns_rgb.png": (rgb, {"transparency": (10, 200, 30)}, True),
        "trns_l.png": (rgb.convert("L"), {"transparency": 0}, True),
        "meta.png": (rgb, meta, True),
        "exif.png": (rgb, {"exif": exif}, True),
        "text.png": (rgb, {"pnginfo": _text_chunks()}, False),
        "raw_exif.png": (rgb, {"pnginfo": _raw_profile_exif(exif)}, False),
        "apng.png": (rgb, {"save_all": True, "append_images": [rgb.convert("L")]}, False),
        "grey.jpg": (rgb.convert("L"), {}, True),
        "progressive.jpg": (rgb, {"progressive": True, "optimize": True}, True),
        "meta.jpg": (rgb, {**meta, "comment": b"hello", "subsampling": 0}, True),
        "exif.jpg": (rgb, {"exif": exif}, True),
        "xmp.jpg": (rgb, {"xmp": b'<x tiff:Orientation="6"/>'}, True),
        "restart.jpg": (rgb, {"restart_marker_blocks": 1}, True),
        "cmyk.jpg": (rgb.convert("CMYK"), {}, True),
        "mpo.jpg": (rgb, {"format": "MPO", "save_all": True, "append_images": [rgb]}, False),
    }
    for name, (image, options, fast) in saves.items():
        yield _save(image, folder / name, options), fast
    trailing = folder / "trailing.jpg"
    trailing.write_bytes((folder / "grey.jpg").read_bytes() + b"trailer")
    yield trailing, False
    for orientation in range(1, 9):
        yield (
            factory.exif_rotated_jpeg(folder, f"o{orientation}.jpg", orientation=orientation),
            True,
        )


def _text_chunks():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "labeler")
    info.add_itxt("XML:com.adobe.xmp", '<x tiff:Orientation="6"/>', zip=True)
    return info


def _raw_profile_exif(exif):
    """EXIF the way ImageMagick stores it in PNG: hex in a text chunk after three lines."""
    from PIL import PngImagePlugin

    data = exif.tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(data):8d}\n{data.hex()}\n")
    return info


def _save(image, path, options):
    options = dict(options)
    image.save(path, options.pop("format", None), **options)
    return path


def test_fast_path_matches_pillow(tmp_path):
    for path, fast in _variants(tmp_path):
        assert (probing.fast_header(path.read_bytes()) is not None) == fast, path.name
        quick, thorough = probe(path), probe(path, decode=True)
        fields = ("status", "reason", "format", "width", "height", "mode", "frames", "sha256")
        assert [getattr(quick, f) for f in fields] == [getattr(thorough, f) for f in fields]
        assert quick.status == "ok", (path.name, quick.reason)
        with Image.open(path) as im:
            shown = ImageOps.exif_transpose(im)
            assert (quick.width, quick.height) == shown.size, path.name
            assert (quick.mode, quick.frames) == (im.mode, getattr(im, "n_frames", 1))


# load_rgb ----------------------------------------------------------------------------------------


def _close(pixel, expected, tolerance=12):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def test_load_rgb_converts_odd_modes(tmp_path):
    palette = load_rgb(factory.palette_png_transparent(tmp_path))
    assert (palette.mode, palette.getpixel((2, 2)), palette.getpixel((30, 2))) == (
        "RGB",
        factory.WHITE,
        factory.RED,
    )
    assert load_rgb(factory.rgba_png(tmp_path)).getpixel((0, 0)) == factory.WHITE
    grey = load_rgb(factory.png16(tmp_path)).getpixel((3, 3))
    assert grey[0] == grey[1] == grey[2] and 120 <= grey[0] <= 136  # not clipped to 255
    assert _close(load_rgb(factory.cmyk_jpeg(tmp_path)).getpixel((5, 5)), factory.RED, 40)
    assert load_rgb(factory.animated_gif(tmp_path)).getpixel((1, 1)) == factory.RED
    assert load_rgb(factory.multipage_tiff(tmp_path)).getpixel((1, 1)) == factory.BLUE
    assert load_rgb(factory.one_pixel(tmp_path)).size == (1, 1)
    assert load_rgb(factory.wide_strip(tmp_path), draft_size=(224, 224)).size == (12000, 1)
    for mode, value, expected in [("1", 1, 255), ("L", 77, 77), ("I", 40000, 155), ("F", 0.5, 127)]:
        path = tmp_path / f"mode_{mode}.tif"
        Image.new(mode, (4, 4), value).save(path)
        image = load_rgb(path)
        assert image.mode == "RGB"
        assert _close(image.getpixel((0, 0)), (expected,) * 3, 1), mode


def test_load_rgb_applies_exif_orientation_like_imageops(tmp_path):
    shown = load_rgb(factory.exif_rotated_jpeg(tmp_path))
    assert shown.size == (32, 64)
    assert _close(shown.getpixel((16, 4)), factory.RED)
    assert _close(shown.getpixel((16, 60)), factory.BLUE)
    for orientation in range(1, 9):
        path = factory.exif_rotated_jpeg(tmp_path, f"o{orientation}.jpg", orientation=orientation)
        with Image.open(path) as im:
            reference = ImageOps.exif_transpose(im.convert("RGB"))
        ours = load_rgb(path)
        assert ours.size == reference.size
        assert ImageChops.difference(ours, reference).getbbox() is None, orientation


def test_load_rgb_draft_picks_the_smallest_scale_still_large_enough(tmp_path):
    flat = factory.rgb_jpeg(tmp_path, "large.jpg", size=(1600, 1200))
    assert load_rgb(flat).size == (1600, 1200)
    assert load_rgb(flat, draft_size=(224, 224)).size == (400, 300)  # 1/4; 1/8 is < 224 high
    assert load_rgb(flat, draft_size=(100, 100)).size == (200, 150)
    assert load_rgb(flat, draft_size=(1000, 1000)).size == (1600, 1200)
    # Displayed 1200x1600: the requested size is turned into stored pixels before the draft.
    turned = factory.exif_rotated_jpeg(tmp_path, "turned.jpg", size=(1600, 1200))
    image = load_rgb(turned, draft_size=(300, 400))
    assert image.size == (300, 400)
    assert _close(image.getpixel((150, 10)), factory.RED)


@pytest.mark.parametrize(
    ("writer", "status", "words"),
    [
        (lambda folder: folder / "gone.jpg", "missing", NO_SUCH_FILE),
        (lambda folder: folder, "unreadable", "is a directory"),
        (factory.empty_file, "unsupported", "empty file"),
        (factory.text_as_jpg, "unsupported", "not recognised"),
        (factory.truncated_jpeg, "unreadable", "truncated JPEG"),
        (factory.truncated_png, "unreadable", "truncated PNG"),
        (_bad_ihdr, "unreadable", "corrupt PNG"),
        (factory.huge_declared_png, "too_large", "pixels > limit"),
    ],
)
def test_load_rgb_failures_carry_status_and_reason(tmp_path, writer, status, words):
    with pytest.raises(ImageDecodeError) as caught:
        load_rgb(writer(tmp_path), draft_size=(64, 64))
    error = caught.value
    assert isinstance(error, LabelerError)
    assert error.status == status and words in error.reason
    assert str(error) == f"{status}: {error.reason}"
    copy = pickle.loads(pickle.dumps(error))  # crosses loader worker processes
    assert (copy.status, copy.reason) == (error.status, error.reason)


def test_probe_result_is_a_frozen_dataclass_that_pickles(tmp_path):
    result = probe(factory.rgb_png(tmp_path))
    assert result.ok and not Probe(status="unsupported").ok
    assert pickle.loads(pickle.dumps(result)) == result  # returned from scan worker processes
    with pytest.raises(AttributeError):
        result.status = "unreadable"
