import json
import re
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from labeler.errors import InputError
from labeler.training.readers import read_captions
from labeler.training.scenes import (
    COLOURS,
    HARD_KINDS,
    SHAPES,
    SceneObject,
    generate_scenes,
    make_scene,
    mentioned_objects,
    objects_right,
)

COUNT = 40


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "s"
    result = generate_scenes(out, count=COUNT, seed=3, hard_fraction=0.25)
    doc = json.loads(result.json_path.read_text(encoding="utf-8"))
    return result, doc


def files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(scenes, tmp_path):
    result, _ = scenes
    again = generate_scenes(tmp_path / "again", count=COUNT, seed=3, hard_fraction=0.25)
    first = files(result.json_path.parent)
    assert len(first) == COUNT + 1
    assert files(again.json_path.parent) == first
    other = generate_scenes(tmp_path / "other", count=COUNT, seed=4, hard_fraction=0.25)
    assert other.json_path.read_bytes() != result.json_path.read_bytes()


def test_counts_splits_and_hard_share(scenes):
    result, doc = scenes
    assert (result.count, result.hard_count) == (COUNT, 10)
    assert result.split_counts == {"train": 32, "val": 4, "test": 4}
    images = doc["images"]
    assert [r["split"] for r in images] == ["train"] * 32 + ["val"] * 4 + ["test"] * 4
    assert sum(r["hard"] for r in images) == 10
    assert {r["hard_kind"] for r in images if r["hard"]} <= set(HARD_KINDS)
    assert all(r["hard_kind"] is None for r in images if not r["hard"])
    assert all(1 <= len(r["objects"]) <= 3 for r in images)
    assert {len(r["objects"]) for r in images} == {1, 2, 3}


def test_captions_name_the_right_colours_and_shapes(scenes):
    _, doc = scenes
    for record in doc["images"]:
        raws = [s["raw"] for s in record["sentences"]]
        assert len(set(raws)) == 5
        for sentence in record["sentences"]:
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", sentence["raw"])
            assert sentence["tokens"] == sentence["raw"].split()
            assert objects_right(sentence["raw"], record["objects"]), sentence["raw"]


def test_relative_positions_match_the_layout(scenes):
    _, doc = scenes
    for record in doc["images"]:
        objects, layout = record["objects"], record["layout"]
        along, across = ("x", "y") if layout.endswith("h") else ("y", "x")
        for first, second in pairwise(objects):  # reading order
            gap = second[along] - first[along]
            assert gap > 0 and gap > abs(second[across] - first[across]), record["filename"]
        if layout == "2h":
            left, right = (f"{o['colour']} {o['shape']}" for o in objects)
            for raw in (s["raw"] for s in record["sentences"]):
                assert f"{right} to the left of" not in raw
                assert f"{left} to the right of" not in raw


def test_easy_images_show_each_object_in_its_colour(scenes):
    result, doc = scenes
    for record in doc["images"]:
        if record["hard"]:
            continue
        pixels = np.asarray(Image.open(result.images_dir / record["filename"]), np.int16)
        assert pixels.shape == (128, 128, 3)
        for obj in record["objects"]:
            centre = pixels[int(obj["y"] * 128), int(obj["x"] * 128)]
            assert np.abs(centre - COLOURS[obj["colour"]]).max() <= 16, record["filename"]


def test_the_karpathy_reader_loads_the_scenes(scenes):
    result, doc = scenes
    loaded = read_captions(result.json_path)
    assert loaded.fmt == "karpathy"
    assert len(loaded.items) == COUNT and loaded.skipped.total == 0
    first = loaded.items[0]
    assert first.key == "images/scene_00000.png"
    assert first.captions == [s["raw"] for s in doc["images"][0]["sentences"]]
    assert first.extra["objects"] == doc["images"][0]["objects"]
    assert len(read_captions(result.json_path, split="test").items) == 4


def test_options_size_format_single_split_and_no_hard(tmp_path):
    result = generate_scenes(
        tmp_path / "s",
        count=6,
        seed=0,
        size=64,
        image_format="jpeg",
        splits="test",
        hard_fraction=0,
    )
    assert result.split_counts == {"test": 6} and result.hard_count == 0
    images = sorted(result.images_dir.iterdir())
    assert [p.suffix for p in images] == [".jpg"] * 6
    with Image.open(images[0]) as image:
        assert (image.format, image.size) == ("JPEG", (64, 64))


def test_progress_is_reported(tmp_path):
    seen = []
    generate_scenes(tmp_path / "s", count=3, seed=0, on_progress=lambda d, n: seen.append((d, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_a_folder_with_content_needs_overwrite_which_removes_stale_scenes(tmp_path):
    generate_scenes(tmp_path / "s", count=4, seed=0)
    with pytest.raises(InputError, match="not empty"):
        generate_scenes(tmp_path / "s", count=2, seed=0)
    result = generate_scenes(tmp_path / "s", count=2, seed=0, overwrite=True)
    assert sorted(p.name for p in result.images_dir.iterdir()) == [
        "scene_00000.png",
        "scene_00001.png",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 0},
        {"seed": -1},
        {"hard_fraction": 1.5},
        {"size": 8},
        {"image_format": "gif"},
        {"splits": {"train": 0.5, "test": 0.4}},
    ],
)
def test_bad_arguments_are_input_errors(tmp_path, kwargs):
    with pytest.raises(InputError):
        generate_scenes(tmp_path / "s", **({"count": 2, "seed": 0} | kwargs))


# "objects right"

RED_CIRCLE = SceneObject("circle", "red", "large", 0.3, 0.5)
BLUE_SQUARE = SceneObject("square", "blue", "small", 0.7, 0.5)


@pytest.mark.parametrize(
    ("caption", "right"),
    [
        ("a large red circle to the left of a small blue square", True),
        ("a small blue square to the right of a big red circle", True),
        ("A red circle, and a blue square.", True),  # sizes and punctuation do not matter
        ("a large red square to the left of a small blue circle", False),  # shapes swapped
        ("a large green circle to the left of a small blue square", False),  # wrong colour
        ("a large red circle", False),  # an object missing
        ("a red circle a blue square and a yellow star", False),  # an object too many
        ("a large circle to the left of a small blue square", False),  # a colour missing
        ("a red circle next to a blue", False),  # a colour without a shape
    ],
)
def test_objects_right(caption, right):
    assert objects_right(caption, [RED_CIRCLE, BLUE_SQUARE]) is right


def test_objects_right_takes_the_json_dicts_and_counts_duplicates():
    objects = [{"shape": "star", "colour": "yellow"}, {"shape": "star", "colour": "yellow"}]
    assert objects_right("a yellow star above a yellow star", objects)
    assert not objects_right("a yellow star", objects)
    assert mentioned_objects("a big yellow star above a cross") == [
        ("yellow", "star"),
        (None, "cross"),
    ]


def test_vocabulary_is_small():
    words = set()
    for seed in range(60):
        for caption in make_scene(np.random.default_rng([seed, 0])).captions:
            words.update(caption.split())
    assert set(SHAPES) <= words and set(COLOURS) <= words
    assert len(words) <= 60
