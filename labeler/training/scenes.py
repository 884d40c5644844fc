"""Generated caption scenes: the offline data set for tests, the demo and the training benchmark.

Each scene holds one to three shapes, each with a colour, a size and a place along one axis, on a
plain, gradient or lightly textured background, and comes with five paraphrased reference captions.
The grammar is deliberately tiny (about 50 words, lower case, no punctuation) so that a small LSTM
can learn it within the demo's few minutes; what makes a scene hard is the image, not the language.
A share of scenes is degraded (low contrast, heavy noise, or a patch hiding most of one object) and
marked hard: their captions still state the truth, but the pixels no longer show it for certain,
which is what the confidence benchmark needs.

Determinism: scene i is drawn from its own generator seeded with (seed, i), and the hard scenes are
chosen by a generator seeded with seed alone, so the same arguments give byte-identical files
(with the same numpy and Pillow). The output is an image folder plus a Karpathy-style
`dataset_scenes.json`, so `read_captions` loads it like any real data set; the extra per-image
fields (`objects`, `hard`, `hard_kind`) travel in `CaptionedImage.extra`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from labeler.atomic import atomic_binary
from labeler.errors import InputError

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {  # saturated and far apart in hue, so a colour name is never a judgement call
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 85, 220),
    "yellow": (240, 205, 25),
    "purple": (145, 55, 185),
    "orange": (245, 130, 20),
}
SIZES = {"small": 0.09, "large": 0.15}  # radius as a share of the image side
SIZE_WORDS = {"small": ("small",), "large": ("large", "large", "big")}  # "big" a third of the time
PLAIN_BACKGROUNDS = {"white": 245, "grey": 170, "dark": 45}  # neutral, so objects keep their hue
HARD_KINDS = ("low contrast", "noise", "occlusion")
DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
JSON_NAME = "dataset_scenes.json"
IMAGES_DIR = "images"
CAPTIONS_PER_IMAGE = 5
FORMAT_VERSION = 1

# Paraphrases by layout; {0}, {1}, {2} are the objects in reading order (left to right or top to
# bottom), {bg} the background word. Each scene takes five distinct templates of its layout.
TEMPLATES = {
    "1": [
        "a {0}",
        "a {0} on a {bg} background",
        "there is a {0}",
        "a single {0}",
        "one {0} on a {bg} background",
        "a picture of a {0}",
    ],
    "2h": [
        "a {0} to the left of a {1}",
        "a {1} to the right of a {0}",
        "a {0} on the left and a {1} on the right",
        "a {1} on the right and a {0} on the left",
        "a {0} next to a {1}",
        "a {0} and a {1} on a {bg} background",
    ],
    "2v": [
        "a {0} above a {1}",
        "a {1} below a {0}",
        "a {0} at the top and a {1} at the bottom",
        "a {1} at the bottom and a {0} at the top",
        "a {0} and a {1} on a {bg} background",
    ],
    "3h": [
        "a {0} a {1} and a {2} from left to right",
        "a {0} on the left a {1} in the middle and a {2} on the right",
        "a {2} on the right a {1} in the middle and a {0} on the left",
        "a {1} between a {0} and a {2}",
        "a {0} to the left of a {1} and a {2}",
    ],
    "3v": [
        "a {0} a {1} and a {2} from top to bottom",
        "a {0} at the top a {1} in the middle and a {2} at the bottom",
        "a {2} at the bottom a {1} in the middle and a {0} at the top",
        "a {1} between a {0} and a {2}",
        "a {0} above a {1} and a {2}",
    ],
}


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str  # "small" or "large"
    x: float  # centre, as a share of the image width
    y: float


@dataclass
class Scene:
    objects: list[SceneObject]  # in reading order
    layout: str  # a TEMPLATES key
    background: str  # the background word the captions use
    captions: list[str]
    hard_kind: str | None  # one of HARD_KINDS, None for an easy scene


@dataclass
class ScenesResult:
    json_path: Path
    images_dir: Path
    count: int
    hard_count: int
    split_counts: dict[str, int]


def generate_scenes(
    out_dir: str | Path,
    *,
    count: int,
    seed: int = 0,
    hard_fraction: float = 0.2,
    size: int = 128,
    splits: Mapping[str, float] | str = DEFAULT_SPLITS,
    image_format: str = "png",
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> ScenesResult:
    """Write `count` scenes under `out_dir`: images/scene_NNNNN.png and dataset_scenes.json.

    `splits` maps split names to fractions (assigned in order, in contiguous blocks), or is one
    split name for all scenes. `on_progress(done, count)` is called as images are written.
    """
    _check_args(count, seed, hard_fraction, size, image_format)
    split_names = _split_names(count, splits)
    out_dir = Path(out_dir)
    images_dir = _prepare(out_dir, overwrite)
    hard = set(np.random.default_rng(seed).permutation(count)[: round(count * hard_fraction)])
    digits = max(5, len(str(count - 1)))
    ext = "png" if image_format == "png" else "jpg"
    records = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        scene = make_scene(rng, hard=i in hard)
        image = render_scene(scene, rng, size=size)
        filename = f"scene_{i:0{digits}d}.{ext}"
        _save(image, images_dir / filename, image_format)
        records.append(_record(i, filename, split_names[i], scene))
        if on_progress is not None:
            on_progress(i + 1, count)
    doc = {
        "dataset": "scenes",
        "format_version": FORMAT_VERSION,
        "generator": {"seed": seed, "count": count, "size": size, "hard_fraction": hard_fraction},
        "images": records,
    }
    json_path = out_dir / JSON_NAME
    with atomic_binary(json_path) as output:  # written last: a JSON means every image exists
        output.handle.write(json.dumps(doc).encode())
    return ScenesResult(json_path, images_dir, count, len(hard), dict(Counter(split_names)))


def make_scene(rng: np.random.Generator, *, hard: bool = False) -> Scene:
    """Draw a scene's content (objects, layout, captions), not its pixels."""
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.35, 0.3]))
    layout = "1" if n == 1 else f"{n}{rng.choice(['h', 'v'])}"
    kinds = rng.permutation(len(SHAPES) * len(COLOURS))[:n]  # distinct (shape, colour) pairs
    objects = []
    for kind in kinds:
        shape, colour = SHAPES[kind // len(COLOURS)], list(COLOURS)[kind % len(COLOURS)]
        objects.append(SceneObject(shape, colour, str(rng.choice(list(SIZES))), 0.0, 0.0))
    _place(objects, layout, rng)
    background = str(rng.choice([*PLAIN_BACKGROUNDS, "gradient", "textured"]))
    hard_kind = str(rng.choice(HARD_KINDS)) if hard else None
    templates = rng.permutation(len(TEMPLATES[layout]))[:CAPTIONS_PER_IMAGE]
    captions = []
    for t in templates:
        words = [f"{rng.choice(SIZE_WORDS[o.size])} {o.colour} {o.shape}" for o in objects]
        captions.append(TEMPLATES[layout][t].format(*words, bg=background))
    return Scene(objects, layout, background, captions, hard_kind)


def _place(objects: list[SceneObject], layout: str, rng: np.random.Generator) -> None:
    """Centres along one axis in reading order; the other coordinate varies less than the gap,
    so "left of" or "above" is never in doubt."""
    margin = 0.04
    radii = [SIZES[o.size] for o in objects]
    if layout == "1":
        r = radii[0]
        objects[0].x, objects[0].y = rng.uniform(margin + r, 1 - margin - r, size=2)
        return
    slot = (1 - 2 * margin) / len(objects)
    line = 0.5 + rng.uniform(-1, 1) * (0.5 - margin - max(radii) - 0.15 * slot)
    for i, (obj, r) in enumerate(zip(objects, radii, strict=True)):
        along = margin + (i + 0.5) * slot + rng.uniform(-1, 1) * max(0.0, slot / 2 - r) * 0.8
        across = line + rng.uniform(-1, 1) * 0.15 * slot
        obj.x, obj.y = (along, across) if layout.endswith("h") else (across, along)


def render_scene(scene: Scene, rng: np.random.Generator, *, size: int = 128) -> Image.Image:
    img = _background(scene.background, rng, size)
    contrast = 1.0
    if scene.hard_kind == "low contrast":
        contrast = rng.uniform(0.15, 0.3)
    elif scene.hard_kind == "noise":  # faded too: noise alone leaves bold shapes easy to read
        contrast = rng.uniform(0.45, 0.7)
    for obj in scene.objects:
        colour = (np.array(COLOURS[obj.colour]) + rng.uniform(-12, 12, 3)).astype(np.float32)
        alpha, (x0, y0, x1, y1) = _shape_mask(obj, rng, size)
        alpha *= contrast
        region = img[y0:y1, x0:x1]  # blending only the shape's box keeps a scene near 1 ms
        region += (colour - region) * alpha
    if scene.hard_kind == "occlusion":
        img = _occlude(img, scene.objects[int(rng.integers(len(scene.objects)))], rng, size)
    elif scene.hard_kind == "noise":
        img += rng.normal(0, rng.uniform(60, 90), img.shape).astype(np.float32)
    np.clip(img, 0, 255, out=img)
    return Image.fromarray((img + 0.5).astype(np.uint8), "RGB")


def _background(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32; plain, a gradient between two tones, or faint blotches."""
    if name in PLAIN_BACKGROUNDS:
        return np.full((size, size, 3), PLAIN_BACKGROUNDS[name], np.float32)
    light = rng.random() < 0.6
    if name == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
        t = (xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle)
        t = ((t - t.min()) / (t.max() - t.min()))[..., None]
        return (_tone(rng, light) * (1 - t) + _tone(rng, light) * t).astype(np.float32)
    coarse = rng.normal(0, 1, (size // 8, size // 8)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BILINEAR))
    return (_tone(rng, light) + 10 * blotches[..., None]).astype(np.float32)


def _tone(rng: np.random.Generator, light: bool) -> np.ndarray:
    """A near-neutral RGB tone: a small tint, never a named colour."""
    base = rng.uniform(175, 240) if light else rng.uniform(25, 75)
    return base * (1 + rng.uniform(-0.06, 0.06, 3))  # a tint that scales with brightness


def _shape_mask(
    obj: SceneObject, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The shape's coverage in [0, 1], shaped (h, w, 1), and its box (x0, y0, x1, y1). Drawn at
    twice the size and averaged down, so edges are anti-aliased (ImageDraw's are hard)."""
    scale = 2 * size
    cx, cy, r = obj.x * scale, obj.y * scale, SIZES[obj.size] * scale
    mask = Image.new("L", (scale, scale), 0)
    draw = ImageDraw.Draw(mask)
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        turn = rng.uniform(-0.2, 0.2)  # radians: a slight tilt, never enough to change the name
        draw.polygon(
            [
                (cx + x * np.cos(turn) - y * np.sin(turn), cy + x * np.sin(turn) + y * np.cos(turn))
                for x, y in _outline(obj.shape, r)
            ],
            fill=255,
        )
    small = mask.resize((size, size), Image.BOX)
    box = small.getbbox() or (0, 0, 0, 0)
    return (np.asarray(small.crop(box), np.float32) / 255)[..., None], box


def _outline(shape: str, r: float) -> list[tuple[float, float]]:
    """Polygon points around the origin, all within radius r (so layouts never overlap)."""
    if shape == "square":
        h = 0.78 * r
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        angles = [-np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
        return [(r * np.cos(a), r * np.sin(a) + 0.15 * r) for a in angles]
    if shape == "star":
        return [
            (
                (r if k % 2 == 0 else 0.45 * r) * np.cos(-np.pi / 2 + k * np.pi / 5),
                (r if k % 2 == 0 else 0.45 * r) * np.sin(-np.pi / 2 + k * np.pi / 5),
            )
            for k in range(10)
        ]
    a, w = 0.95 * r, 0.32 * r  # cross: arm length and half width
    return [
        (-w, -a),
        (w, -a),
        (w, -w),
        (a, -w),
        (a, w),
        (w, w),
        (w, a),
        (-w, a),
        (-w, w),
        (-a, w),
        (-a, -w),
        (-w, -w),
    ]


def _occlude(img: np.ndarray, obj: SceneObject, rng: np.random.Generator, size: int) -> np.ndarray:
    """Cover 60-85% of one object with a flat neutral patch from one side."""
    r = SIZES[obj.size] * size
    cx, cy = obj.x * size, obj.y * size
    box = [cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2]
    cover = rng.uniform(0.6, 0.85) * (2 * r + 4)
    side = int(rng.integers(4))  # the patch comes from the left, right, top or bottom
    if side == 0:
        box[2] = box[0] + cover
    elif side == 1:
        box[0] = box[2] - cover
    elif side == 2:
        box[3] = box[1] + cover
    else:
        box[1] = box[3] - cover
    x0, y0, x1, y1 = (int(round(max(0.0, min(float(size), v)))) for v in box)
    patch = img.copy()
    patch[y0:y1, x0:x1] = rng.uniform(90, 200)
    return patch


def _save(image: Image.Image, path: Path, image_format: str) -> None:
    if image_format == "png":
        image.save(path, format="PNG", compress_level=1)  # fast; the files are small anyway
    else:
        image.save(path, format="JPEG", quality=92)


def _record(index: int, filename: str, split: str, scene: Scene) -> dict[str, Any]:
    return {
        "imgid": index,
        "filepath": IMAGES_DIR,
        "filename": filename,
        "split": split,
        "sentences": [{"raw": c, "tokens": c.split()} for c in scene.captions],
        "objects": [asdict(o) | {"x": round(o.x, 4), "y": round(o.y, 4)} for o in scene.objects],
        "layout": scene.layout,
        "background": scene.background,
        "hard": scene.hard_kind is not None,
        "hard_kind": scene.hard_kind,
    }


def _check_args(count: int, seed: int, hard_fraction: float, size: int, fmt: str) -> None:
    if count < 1:
        raise InputError(f"count must be at least 1, not {count}")
    if seed < 0:
        raise InputError(f"seed must not be negative, not {seed}")
    if not 0 <= hard_fraction <= 1:
        raise InputError(f"hard_fraction must lie in [0, 1], not {hard_fraction}")
    if size < 32:
        raise InputError(f"size must be at least 32 pixels, not {size}")
    if fmt not in ("png", "jpeg"):
        raise InputError(f"image_format must be 'png' or 'jpeg', not {fmt!r}")


def _split_names(count: int, splits: Mapping[str, float] | str) -> list[str]:
    """The split of each scene, in contiguous blocks sized by largest remainder."""
    if isinstance(splits, str):
        return [splits] * count
    if not splits or any(f < 0 for f in splits.values()) or abs(sum(splits.values()) - 1) > 1e-6:
        raise InputError(f"split fractions must be non-negative and sum to 1: {dict(splits)}")
    exact = {name: f * count for name, f in splits.items()}
    sizes = {name: int(v) for name, v in exact.items()}
    by_remainder = sorted(exact, key=lambda n: sizes[n] - exact[n])  # largest remainder first
    for name in by_remainder[: count - sum(sizes.values())]:
        sizes[name] += 1
    return [name for name in splits for _ in range(sizes[name])]


def _prepare(out_dir: Path, overwrite: bool) -> Path:
    """Create out_dir/images; refuse a folder with other content unless `overwrite`, which then
    removes only earlier scene images (a stale scene must not be scanned as a new one)."""
    images_dir = out_dir / IMAGES_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise InputError(f"{out_dir}: folder is not empty (pass overwrite to replace scenes)")
        if images_dir.is_dir():
            for old in images_dir.iterdir():
                if re.fullmatch(r"scene_\d+\.(png|jpg)", old.name):
                    old.unlink()
    images_dir.mkdir(parents=True, exist_ok=True)
    return images_dir


_WORD = re.compile(r"[a-z]+")


def mentioned_objects(caption: str) -> list[tuple[str | None, str | None]]:
    """(colour, shape) pairs a caption names; a shape without a colour, or a colour without a
    shape, gives a pair with None, so a vague caption never passes for a right one."""
    pairs: list[tuple[str | None, str | None]] = []
    colour = None
    for word in _WORD.findall(caption.lower()):
        if word in COLOURS:
            if colour is not None:
                pairs.append((colour, None))
            colour = word
        elif word in SHAPES:
            pairs.append((colour, word))
            colour = None
    if colour is not None:
        pairs.append((colour, None))
    return pairs


def objects_right(caption: str, objects: Iterable[SceneObject | Mapping[str, Any]]) -> bool:
    """Whether `caption` names every object's colour and shape, and nothing else.

    `objects` are SceneObjects or the dicts stored in dataset_scenes.json (`extra["objects"]`).
    Sizes and positions are not checked: this is the benchmark's "objects right".
    """
    truth = Counter(
        (o["colour"], o["shape"]) if isinstance(o, Mapping) else (o.colour, o.shape)
        for o in objects
    )
    return Counter(mentioned_objects(caption)) == truth
