"""Training data readers: five caption file formats, one result type.

Each format is parsed by a short reader that only turns the file into records (image path, captions,
split, extra fields) and hands them to `CaptionSetBuilder`. The builder owns every rule that is not
about syntax: it merges the captions of one image, refuses an image placed in two splits, keeps only
the requested split, and checks each image (a cheap existence check, then Pillow's header read,
never a full decode). A missing or unreadable image is skipped and counted, never an error, because
a large data set always has a few; a malformed file is an error, because training on half a file
silently is worse than stopping. The store's reviewed captions are one more reader
(labeler/training/store_reader.py) that feeds the same builder from a database session.

`split` means "keep only this split" for a format that names splits (Karpathy JSON, Flickr8k with
its split lists, a CSV/JSONL with a `split` column) and "the split every image gets" (default
"train") for one that does not.
"""

from __future__ import annotations

import csv
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from labeler.errors import FormatError, InputError
from labeler.formats.streams import jsonl_items, parse_json

FORMATS = ("karpathy", "flickr8k", "coco", "csv", "jsonl")
MAX_EXAMPLES = 5  # skipped paths kept per reason: enough to see a pattern, small for 10M images
FILE_COLUMNS = ("file_name", "filename", "image")  # HF imagefolder, Karpathy, Kaggle Flickr8k
CAPTION_COLUMNS = ("caption", "text")  # our exports and HF imagefolder metadata
FLICKR8K_LISTS = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
FLICKR8K_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")  # sic: the official zip
_TOKEN_LINE = re.compile(r"(?P<name>[^#\t]+)#(?P<idx>\d+)\s+(?P<caption>.*)")


@dataclass
class CaptionedImage:
    image_path: Path  # absolute
    captions: list[str]
    split: str  # "train", "val", "test", "restval", ...
    key: str  # stable id: the file's path relative to the images root, with "/" separators
    extra: dict[str, Any] = field(default_factory=dict)  # other fields, e.g. scene objects


@dataclass
class SkipSummary:
    counts: dict[str, int] = field(default_factory=dict)  # reason -> images skipped
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few paths

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(example)


@dataclass
class CaptionSet:
    items: list[CaptionedImage]
    skipped: SkipSummary
    fmt: str
    source: Path
    images_dir: Path

    @property
    def num_captions(self) -> int:
        return sum(len(item.captions) for item in self.items)

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.split] = counts.get(item.split, 0) + 1
        return counts

    def in_split(self, *names: str) -> list[CaptionedImage]:
        return [item for item in self.items if item.split in names]


def check_image(path: Path) -> str | None:
    """The reason to skip `path` ("missing", "unreadable"), or None when Pillow can open it."""
    if not path.is_file():
        return "missing"
    try:
        # Image.open reads the header only; truncated pixel data is the loader's concern.
        with Image.open(path):
            pass
    except Exception:  # Pillow raises many types on bad headers; any of them means unreadable
        return "unreadable"
    return None


class CaptionSetBuilder:
    """Collects records from a reader, then checks the images and builds the CaptionSet."""

    def __init__(self, images_dir: Path, *, keep_split: str | None, source: Path, fmt: str):
        self.images_dir = Path(os.path.abspath(images_dir))
        self.keep_split = keep_split
        self.default_split = keep_split or "train"
        self.source, self.fmt = source, fmt
        self.skipped = SkipSummary()
        self._items: dict[str, CaptionedImage] = {}
        self._seen_at: dict[str, str] = {}

    def add(
        self,
        rel_path: str,
        captions: list[str],
        split: str,
        where: str,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Add captions of the image at `rel_path` (relative to the images dir, or absolute)."""
        path = Path(os.path.abspath(self.images_dir / rel_path))
        key = _key(path, self.images_dir)
        if not captions:
            if self.keep_split in (None, split):
                self.skipped.add("no captions", str(path))
            return
        item = self._items.get(key)
        if item is None:
            self._items[key] = CaptionedImage(path, list(captions), split, key, dict(extra or {}))
            self._seen_at[key] = where
        elif item.split != split:
            raise FormatError(
                f"{where}: {key} is in split {split!r} here but in "
                f"{item.split!r} at {self._seen_at[key]}"
            )
        else:
            item.captions.extend(captions)

    def finish(self) -> CaptionSet:
        wanted = [
            item
            for item in self._items.values()
            if self.keep_split is None or item.split == self.keep_split
        ]
        if self._items and not wanted:
            found = ", ".join(sorted({item.split for item in self._items.values()}))
            raise InputError(
                f"{self.source}: no images in split {self.keep_split!r} (splits found: {found})"
            )
        # Header reads are I/O bound, so threads overlap them even on network storage.
        with ThreadPoolExecutor(max_workers=8) as pool:
            reasons = list(pool.map(check_image, [item.image_path for item in wanted]))
        items = []
        for item, reason in zip(wanted, reasons, strict=True):
            if reason is None:
                items.append(item)
            else:
                self.skipped.add(reason, str(item.image_path))
        if wanted and self.skipped.counts.get("missing") == len(wanted):
            raise InputError(
                f"{self.source}: none of the {len(wanted)} images it lists exist "
                f"under {self.images_dir} (e.g. {wanted[0].image_path}); "
                "pass the images folder"
            )
        return CaptionSet(items, self.skipped, self.fmt, self.source, self.images_dir)


def read_captions(
    path: str | Path,
    *,
    fmt: str | None = None,
    images_dir: str | Path | None = None,
    split: str | None = None,
    split_lists: Mapping[str, str | Path] | None = None,
) -> CaptionSet:
    """Read a captioned data set; `fmt` is detected from the file when None.

    `split_lists` maps split names to Flickr8k-style image lists (one file name a line); by
    default the three official Flickr8k lists are looked for next to the token file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if images_dir is not None and not Path(images_dir).is_dir():
        raise InputError(f"{images_dir}: no such folder")
    data = None
    if fmt is None:
        fmt, data = detect_format(path)
    elif fmt in ("karpathy", "coco"):
        data = load_json(path)
    if images_dir is None:
        images_dir = _default_images_dir(path, fmt)
    builder = CaptionSetBuilder(Path(images_dir), keep_split=split, source=path, fmt=fmt)
    # Reviewed captions from the store will not come through here: they have a session, not a
    # path, and their reader feeds a CaptionSetBuilder of its own.
    if fmt in ("karpathy", "coco"):
        (_read_karpathy if fmt == "karpathy" else _read_coco)(path, data, builder)
    elif fmt == "flickr8k":
        _read_flickr8k(path, builder, split_lists)
    else:
        (_read_csv if fmt == "csv" else _read_jsonl)(path, builder)
    return builder.finish()


def detect_format(path: Path) -> tuple[str, Any]:
    """The format of `path` and, for JSON formats, the parsed document (so it is read once)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl"):
        return suffix[1:], None
    if suffix == ".json":
        data = load_json(path)
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            return "coco", data
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return "karpathy", data
        raise FormatError(
            f"{path.name}: neither a Karpathy split JSON ('images' with "
            "'sentences') nor COCO captions ('images' and 'annotations')"
        )
    for _, line in _lines(path):
        if line.strip():
            if _TOKEN_LINE.fullmatch(line.rstrip("\r\n")):
                return "flickr8k", None
            return ("jsonl", None) if line.lstrip().startswith("{") else ("csv", None)
    raise FormatError(f"{path.name}: empty file")


def load_json(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise FormatError(
            f"{path.name} line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x})"
        ) from None
    return parse_json(text, path.name)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line, decoding line by line so errors can name the line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise FormatError(
                    f"{path.name} line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x})"
                ) from None
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def _key(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # an absolute path outside the images root keys by itself
        return path.as_posix()


def _default_images_dir(path: Path, fmt: str) -> Path:
    if fmt == "flickr8k":  # the official zips unpack the images beside the text files' folder
        for base in (path.parent, path.parent.parent):
            for name in FLICKR8K_IMAGE_DIRS:
                if (base / name).is_dir():
                    return base / name
    return path.parent


def _caption(value: Any, where: str) -> str:
    if value is None:
        raise FormatError(f"{where}: missing caption")
    if not isinstance(value, str):
        raise FormatError(f"{where}: caption is not a string: {value!r}")
    text = " ".join(value.split())  # one line: newlines inside captions break token files
    if not text:
        raise FormatError(f"{where}: empty caption")
    return text


def _field(record: Any, name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """record[name], checked to be of `kind` (and, for text, not blank)."""
    if not isinstance(record, dict):
        raise FormatError(f"{where}: expected an object, found {type(record).__name__}")
    if name not in record:
        raise FormatError(f"{where}: missing {name!r}")
    value = record[name]
    if isinstance(value, str) and kind is str and not value.strip():
        raise FormatError(f"{where}: empty {name!r}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FormatError(f"{where}: bad {name!r}: {value!r}")
    return value


_KARPATHY_FIELDS = {"filename", "filepath", "split", "sentences"}


def _read_karpathy(path: Path, data: Any, builder: CaptionSetBuilder) -> None:
    for i, record in enumerate(_field(data, "images", path.name, list)):
        where = f"{path.name} images[{i}]"
        filename = _field(record, "filename", where)
        filepath = record.get("filepath") or ""
        split = _field(record, "split", where)
        captions = []
        for j, sentence in enumerate(_field(record, "sentences", where, list)):
            at = f"{where}.sentences[{j}]"
            if not isinstance(sentence, dict):
                raise FormatError(f"{at}: expected an object")
            raw = sentence.get("raw")
            if raw is None and isinstance(sentence.get("tokens"), list):
                raw = " ".join(map(str, sentence["tokens"]))  # some dumps keep tokens only
            captions.append(_caption(raw, at))
        extra = {k: v for k, v in record.items() if k not in _KARPATHY_FIELDS}
        builder.add(posixpath.join(filepath, filename), captions, split, where, extra)


def _read_coco(path: Path, data: Any, builder: CaptionSetBuilder) -> None:
    files: dict[Any, str] = {}
    for i, record in enumerate(_field(data, "images", path.name, list)):
        where = f"{path.name} images[{i}]"
        image_id = _field(record, "id", where, (int, str))
        if image_id in files:
            raise FormatError(f"{where}: duplicate id {image_id!r}")
        files[image_id] = _field(record, "file_name", where)
    captions: dict[Any, list[str]] = {image_id: [] for image_id in files}
    for j, record in enumerate(_field(data, "annotations", path.name, list)):
        where = f"{path.name} annotations[{j}]"
        image_id = _field(record, "image_id", where, (int, str))
        if image_id not in files:
            raise FormatError(f"{where}: image_id {image_id!r} is not in images")
        captions[image_id].append(_caption(record.get("caption"), where))
    for i, (image_id, file_name) in enumerate(files.items()):
        builder.add(
            file_name,
            captions[image_id],
            builder.default_split,
            f"{path.name} images[{i}]",
            {"image_id": image_id},
        )


def _read_flickr8k(
    path: Path, builder: CaptionSetBuilder, split_lists: Mapping[str, str | Path] | None
) -> None:
    splits = _read_split_lists(path, split_lists)
    unlisted: set[str] = set()
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        match = _TOKEN_LINE.fullmatch(line.strip("\r\n"))
        if match is None:
            raise FormatError(f"{where}: expected 'image.jpg#N<TAB>caption'")
        name = match["name"].strip()
        caption = _caption(match["caption"], where)
        if not splits:
            builder.add(name, [caption], builder.default_split, where)
        elif name in splits:
            builder.add(name, [caption], splits[name], where)
        elif name not in unlisted:  # counted once, not once per caption
            unlisted.add(name)
            builder.skipped.add("not in a split list", name)


def _read_split_lists(path: Path, given: Mapping[str, str | Path] | None) -> dict[str, str]:
    if given is None:
        found = {s: path.parent / n for s, n in FLICKR8K_LISTS.items()}
        lists = {s: p for s, p in found.items() if p.is_file()}
    else:
        lists = {s: Path(p) for s, p in given.items()}
        for list_path in lists.values():
            if not list_path.is_file():
                raise InputError(f"{list_path}: no such split list")
    splits: dict[str, str] = {}
    for split, list_path in lists.items():
        for number, line in _lines(list_path):
            name = line.strip()
            if name and splits.setdefault(name, split) != split:
                raise FormatError(
                    f"{list_path.name} line {number}: {name} is already "
                    f"in the {splits[name]!r} list"
                )
    return splits


def _read_csv(path: Path, builder: CaptionSetBuilder) -> None:
    reader = csv.reader(line for _, line in _lines(path))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        if not header:
            raise FormatError(f"{path.name}: empty file")
        columns = _columns(header, f"{path.name} line 1")
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{path.name} line {start}", reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise FormatError(f"{where}: expected {len(header)} fields, found {len(row)}")
            _add_row(builder, dict(zip(header, row, strict=True)), columns, where)
    except csv.Error as err:
        raise FormatError(f"{path.name} line {reader.line_num}: {err}") from None


def _read_jsonl(path: Path, builder: CaptionSetBuilder) -> None:
    for where, record in jsonl_items(_lines(path), path.name):
        if not isinstance(record, dict):
            raise FormatError(f"{where}: expected an object")
        _add_row(builder, record, _columns(list(record), where), where)


def _columns(names: list[str], where: str) -> tuple[str, str, str | None]:
    """The file, caption and (optional) split column names found in a header."""
    file_col = next((c for c in FILE_COLUMNS if c in names), None)
    caption_col = next((c for c in CAPTION_COLUMNS if c in names), None)
    for column, wanted in ((file_col, FILE_COLUMNS), (caption_col, CAPTION_COLUMNS)):
        if column is None:
            raise FormatError(
                f"{where}: missing column {wanted[0]!r} (found: {', '.join(names) or 'none'})"
            )
    return file_col, caption_col, "split" if "split" in names else None


def _add_row(
    builder: CaptionSetBuilder,
    row: Mapping[str, Any],
    columns: tuple[str, str, str | None],
    where: str,
) -> None:
    file_col, caption_col, split_col = columns
    file_name = _field(row, file_col, where)
    value = row.get(caption_col)
    values = value if isinstance(value, list) else [value]  # JSONL may list several captions
    captions = [_caption(v, where) for v in values]
    split = _field(row, split_col, where).strip() if split_col else builder.default_split
    builder.add(file_name.strip(), captions, split, where)
