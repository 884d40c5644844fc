import json
from pathlib import Path

import pytest
from PIL import Image

from labeler.errors import FormatError, InputError
from labeler.training.readers import check_image, detect_format, read_captions


def make_image(path: Path, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (200, 30, 30)).save(path, format=fmt)
    return path


def make_unreadable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image at all")
    return path


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def karpathy_record(filename, split, *captions, filepath=None, **extra):
    record = {
        "filename": filename,
        "split": split,
        "sentences": [{"raw": c, "tokens": c.lower().split()} for c in captions],
    }
    if filepath is not None:
        record["filepath"] = filepath
    return record | extra


# Karpathy split JSON


@pytest.fixture
def karpathy(tmp_path):
    make_image(tmp_path / "a.jpg", "JPEG")
    make_image(tmp_path / "val2014" / "b.png")
    make_image(tmp_path / "c.png")
    make_unreadable(tmp_path / "bad.jpg")
    images = [
        karpathy_record("a.jpg", "train", "A dog runs.", "a brown dog", cocoid=7),
        karpathy_record("b.png", "val", "a cat", filepath="val2014"),
        karpathy_record("c.png", "restval", "a bird"),
        karpathy_record("gone.jpg", "train", "a ghost"),
        karpathy_record("bad.jpg", "train", "a broken file"),
    ]
    images[2]["sentences"] = [{"tokens": ["a", "bird"]}]  # some dumps keep tokens only
    return write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": images})


def test_karpathy_reads_captions_splits_and_extra_fields(karpathy, tmp_path):
    result = read_captions(karpathy)
    assert result.fmt == "karpathy"
    assert [item.key for item in result.items] == ["a.jpg", "val2014/b.png", "c.png"]
    first = result.items[0]
    assert first.image_path == tmp_path / "a.jpg" and first.image_path.is_absolute()
    assert first.captions == ["A dog runs.", "a brown dog"]
    assert first.extra == {"cocoid": 7}
    assert result.items[2].captions == ["a bird"]
    assert result.split_counts() == {"train": 1, "val": 1, "restval": 1}
    assert result.num_captions == 4


def test_missing_and_unreadable_images_are_counted_and_skipped(karpathy, tmp_path):
    skipped = read_captions(karpathy).skipped
    assert skipped.counts == {"missing": 1, "unreadable": 1}
    assert skipped.total == 2
    assert skipped.examples == {
        "missing": [str(tmp_path / "gone.jpg")],
        "unreadable": [str(tmp_path / "bad.jpg")],
    }


def test_split_keeps_only_that_split_and_checks_only_its_images(karpathy):
    result = read_captions(karpathy, split="val")
    assert [item.key for item in result.items] == ["val2014/b.png"]
    assert result.skipped.total == 0  # the broken train images were never looked at


def test_unknown_split_is_an_input_error(karpathy):
    with pytest.raises(InputError, match="no images in split 'tset'.*restval, train, val"):
        read_captions(karpathy, split="tset")


def test_images_dir_overrides_the_json_folder(tmp_path):
    make_image(tmp_path / "pics" / "a.png")
    (tmp_path / "meta").mkdir()
    path = write_json(
        tmp_path / "meta" / "d.json", {"images": [karpathy_record("a.png", "test", "a cat")]}
    )
    result = read_captions(path, images_dir=tmp_path / "pics")
    assert result.items[0].image_path == tmp_path / "pics" / "a.png"
    assert result.images_dir == tmp_path / "pics"


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (
            [karpathy_record("a.png", "train", "x")] * 3
            + [{"filename": "d.png", "split": "train"}],
            "dataset.json images[3]: missing 'sentences'",
        ),
        (
            [karpathy_record("a.png", "train", "a cat", "  ")],
            "dataset.json images[0].sentences[1]: empty caption",
        ),
        (
            [{"filename": "", "split": "train", "sentences": []}],
            "dataset.json images[0]: empty 'filename'",
        ),
        (["a.png"], "dataset.json images[0]: expected an object"),
        ({"a.png": 1}, "dataset.json: bad 'images'"),
    ],
)
def test_malformed_karpathy_names_the_record(tmp_path, images, message):
    make_image(tmp_path / "a.png")
    path = write_json(tmp_path / "dataset.json", {"images": images})
    with pytest.raises(FormatError) as caught:
        read_captions(path, fmt="karpathy")
    assert str(caught.value).startswith(message)


def test_bad_json_names_line_and_column(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"images": [\n  {"filename": "a.png",,}\n]}', encoding="utf-8")
    with pytest.raises(FormatError, match=r"dataset\.json line 2 column 24: bad JSON"):
        read_captions(path)


def test_json_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_bytes('{"images": [\n{"filename": "caf\u00e9.png"}]}'.encode("latin-1"))
    with pytest.raises(FormatError, match=r"dataset\.json line 2: not UTF-8 text \(byte 0xe9\)"):
        read_captions(path)


# Flickr8k token file


def write_lines(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def flickr(tmp_path):
    """The official layout: the text zip's folder beside Flicker8k_Dataset (sic)."""
    for name in ("1000_a.jpg", "1001_b.jpg", "1002_c.jpg", "1003_d.jpg"):
        make_image(tmp_path / "Flicker8k_Dataset" / name, "JPEG")
    text = tmp_path / "Flickr8k_text"
    write_lines(text / "Flickr_8k.trainImages.txt", "1000_a.jpg", "1001_b.jpg")
    write_lines(text / "Flickr_8k.devImages.txt", "1002_c.jpg")
    write_lines(text / "Flickr_8k.testImages.txt", "1005_gone.jpg")
    return write_lines(
        text / "Flickr8k.token.txt",
        "1000_a.jpg#0\tA child in a pink dress .",
        "1000_a.jpg#1\tA girl going into a house .",
        "1001_b.jpg#0\tA black dog .",
        "1002_c.jpg#0\tTwo dogs play .",
        "1003_d.jpg#0\tNot in any list .",
        "1003_d.jpg#1\tStill not listed .",
        "1005_gone.jpg#0\tA missing image .",
        "",
    )


def test_flickr8k_uses_the_split_lists_and_finds_the_image_folder(flickr, tmp_path):
    result = read_captions(flickr)
    assert result.fmt == "flickr8k"
    assert result.images_dir == tmp_path / "Flicker8k_Dataset"
    by_key = {item.key: item for item in result.items}
    assert by_key["1000_a.jpg"].captions == [
        "A child in a pink dress .",
        "A girl going into a house .",
    ]
    assert {k: item.split for k, item in by_key.items()} == {
        "1000_a.jpg": "train",
        "1001_b.jpg": "train",
        "1002_c.jpg": "val",
    }  # dev -> val
    assert result.skipped.counts == {"not in a split list": 1, "missing": 1}


def test_flickr8k_without_lists_gives_every_image_the_split_asked_for(tmp_path):
    make_image(tmp_path / "x.jpg")
    path = write_lines(tmp_path / "captions.token", "x.jpg#0\ta cat", "x.jpg#1\ta kitten")
    result = read_captions(path, split="test")
    assert [(i.key, i.split, len(i.captions)) for i in result.items] == [("x.jpg", "test", 2)]


def test_flickr8k_split_lists_can_be_given(tmp_path):
    make_image(tmp_path / "x.jpg")
    make_image(tmp_path / "y.jpg")
    path = write_lines(tmp_path / "t.txt", "x.jpg#0\ta cat", "y.jpg#0\ta dog")
    lists = {
        "train": write_lines(tmp_path / "l" / "tr.txt", "x.jpg"),
        "test": write_lines(tmp_path / "l" / "te.txt", "y.jpg"),
    }
    result = read_captions(path, split_lists=lists)
    assert [(i.key, i.split) for i in result.items] == [("x.jpg", "train"), ("y.jpg", "test")]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["x.jpg#0\ta cat", "", "x.jpg a dog"], "t.txt line 3: expected 'image.jpg#N<TAB>caption'"),
        (["x.jpg#0\ta cat", "x.jpg#1\t  "], "t.txt line 2: empty caption"),
    ],
)
def test_malformed_token_file_names_the_line(tmp_path, lines, message):
    make_image(tmp_path / "x.jpg")
    with pytest.raises(FormatError, match=message):
        read_captions(write_lines(tmp_path / "t.txt", *lines), fmt="flickr8k")


def test_an_image_in_two_split_lists_is_a_format_error(tmp_path):
    path = write_lines(tmp_path / "t.txt", "x.jpg#0\ta cat")
    lists = {
        "train": write_lines(tmp_path / "a.txt", "x.jpg"),
        "test": write_lines(tmp_path / "b.txt", "y.jpg", "x.jpg"),
    }
    with pytest.raises(FormatError, match="b.txt line 2: x.jpg is already in the 'train' list"):
        read_captions(path, split_lists=lists)


# COCO caption annotations


def coco_doc():
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg"},
            {"id": 2, "file_name": "b.jpg"},
            {"id": 3, "file_name": "c.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A man rides a horse."},
            {"id": 11, "image_id": 2, "caption": "A bowl of fruit."},
            {"id": 12, "image_id": 1, "caption": "A rider.\n"},
        ],
    }


def test_coco_groups_annotations_by_image(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        make_image(tmp_path / "val2014" / name, "JPEG")
    path = write_json(tmp_path / "captions_val2014.json", coco_doc())
    result = read_captions(path, images_dir=tmp_path / "val2014", split="val")
    assert result.fmt == "coco"
    assert [(i.key, i.captions, i.split, i.extra) for i in result.items] == [
        ("a.jpg", ["A man rides a horse.", "A rider."], "val", {"image_id": 1}),
        ("b.jpg", ["A bowl of fruit."], "val", {"image_id": 2}),
    ]
    assert result.skipped.counts == {"no captions": 1}  # c.jpg has no annotation


def test_coco_split_defaults_to_train(tmp_path):
    make_image(tmp_path / "a.jpg")
    doc = coco_doc()
    doc["images"] = doc["images"][:1]
    doc["annotations"] = doc["annotations"][:1]
    result = read_captions(write_json(tmp_path / "c.json", doc))
    assert result.split_counts() == {"train": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["annotations"].append({"image_id": 99, "caption": "x"}),
            "c.json annotations[3]: image_id 99 is not in images",
        ),
        (lambda d: d["annotations"][1].pop("caption"), "c.json annotations[1]: missing caption"),
        (lambda d: d["images"][2].pop("file_name"), "c.json images[2]: missing 'file_name'"),
        (
            lambda d: d["images"].append({"id": 2, "file_name": "z.jpg"}),
            "c.json images[3]: duplicate id 2",
        ),
    ],
)
def test_malformed_coco_names_the_record(tmp_path, change, message):
    doc = coco_doc()
    change(doc)
    with pytest.raises(FormatError) as caught:
        read_captions(write_json(tmp_path / "c.json", doc), fmt="coco")
    assert str(caught.value) == message


# CSV and JSONL


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_merges_rows_of_one_image_and_reads_the_split_column(tmp_path):
    make_image(tmp_path / "imgs" / "a.png")
    make_image(tmp_path / "b.png")
    path = write_csv(
        tmp_path / "captions.csv",
        "\ufefffile_name,caption,split\n"
        'imgs/a.png,"a cat, sitting",train\n'
        "\n"
        "b.png,a dog,test\n"
        'imgs/a.png,"a cat\non a mat",train\n',
    )
    result = read_captions(path)
    assert result.fmt == "csv"
    assert [(i.key, i.captions, i.split) for i in result.items] == [
        ("imgs/a.png", ["a cat, sitting", "a cat on a mat"], "train"),
        ("b.png", ["a dog"], "test"),
    ]
    assert [i.key for i in read_captions(path, split="test").items] == ["b.png"]


def test_csv_file_names_are_relative_to_images_dir_when_given(tmp_path):
    make_image(tmp_path / "pics" / "a.png")
    path = write_csv(tmp_path / "c.csv", "filename,caption\na.png,a cat\n")
    result = read_captions(path, images_dir=tmp_path / "pics")
    assert result.items[0].image_path == tmp_path / "pics" / "a.png"
    assert result.items[0].split == "train"


def test_csv_with_an_absolute_path_keys_it_by_itself(tmp_path):
    image = make_image(tmp_path / "elsewhere" / "a.png")
    path = tmp_path / "sub" / "c.csv"
    path.parent.mkdir()
    write_csv(path, f"file_name,caption\n{image},a cat\n")
    assert read_captions(path).items[0].key == image.as_posix()


def test_empty_caption_names_the_line(tmp_path):
    make_image(tmp_path / "a.png")
    rows = "".join(f"a.png,caption {n}\n" for n in range(5))
    path = write_csv(tmp_path / "captions.csv", "file_name,caption\n" + rows + "a.png,  \n")
    with pytest.raises(FormatError) as caught:
        read_captions(path)
    assert str(caught.value) == "captions.csv line 7: empty caption"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "image_path,caption\na.png,x\n",
            "c.csv line 1: missing column 'file_name' (found: image_path, caption)",
        ),
        ("file_name,text2\n", "c.csv line 1: missing column 'caption'"),
        ("file_name,caption\na.png,x\na.png,x,extra\n", "c.csv line 3: expected 2 fields, found 3"),
        ("file_name,caption\n,a cat\n", "c.csv line 2: empty 'file_name'"),
        (
            "file_name,caption,split\na.png,x,train\na.png,y,test\n",
            "c.csv line 3: a.png is in split 'test' here but in 'train' at c.csv line 2",
        ),
        ("", "c.csv: empty file"),
    ],
)
def test_malformed_csv_names_the_line(tmp_path, text, message):
    make_image(tmp_path / "a.png")
    with pytest.raises(FormatError) as caught:
        read_captions(write_csv(tmp_path / "c.csv", text))
    assert str(caught.value).startswith(message)


def test_csv_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("file_name,caption\na.png,a caf\u00e9\n".encode("cp1252"))
    with pytest.raises(FormatError, match=r"c\.csv line 2: not UTF-8 text \(byte 0xe9\)"):
        read_captions(path)


def test_jsonl_reads_one_or_several_captions_a_line(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    path = write_csv(
        tmp_path / "metadata.jsonl",
        '{"file_name": "a.png", "text": "a cat"}\n\n'
        '{"file_name": "b.png", "caption": ["a dog", "a puppy"]}\n'
        '{"file_name": "a.png", "caption": "a kitten"}\n',
    )
    result = read_captions(path)
    assert [(i.key, i.captions) for i in result.items] == [
        ("a.png", ["a cat", "a kitten"]),
        ("b.png", ["a dog", "a puppy"]),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"file_name": "a.png", "caption": "x"}\n{"file_name": "a.png" "caption": "y"}\n',
            "m.jsonl line 2 column 23: bad JSON: Expecting ',' delimiter",
        ),
        (
            '{"file_name": "a.png", "caption": "x"}\n\n["a.png", "y"]\n',
            "m.jsonl line 3: expected an object",
        ),
        ('{"file_name": "a.png", "caption": ""}\n', "m.jsonl line 1: empty caption"),
        ('{"file_name": "a.png", "caption": 3}\n', "m.jsonl line 1: caption is not a string"),
    ],
)
def test_malformed_jsonl_names_the_line(tmp_path, text, message):
    make_image(tmp_path / "a.png")
    with pytest.raises(FormatError) as caught:
        read_captions(write_csv(tmp_path / "m.jsonl", text))
    assert str(caught.value).startswith(message)


# Detection and user errors


def test_detect_format(tmp_path):
    karpathy = write_json(tmp_path / "k.json", {"images": []})
    coco = write_json(tmp_path / "c.json", {"images": [], "annotations": []})
    token = write_lines(tmp_path / "Flickr8k.token.txt", "x.jpg#0\ta cat")
    kaggle = write_lines(tmp_path / "captions.txt", "image,caption", "x.jpg,a cat")
    jsonl = write_lines(tmp_path / "m.ndjson", '{"file_name": "x.jpg", "caption": "a"}')
    assert [detect_format(p)[0] for p in (karpathy, coco, token, kaggle, jsonl)] == [
        "karpathy",
        "coco",
        "flickr8k",
        "csv",
        "jsonl",
    ]
    other = write_json(tmp_path / "o.json", [{"file_name": "x.jpg"}])
    with pytest.raises(FormatError, match="o.json: neither a Karpathy split JSON"):
        detect_format(other)


def test_kaggle_flickr8k_captions_txt_reads_as_csv(tmp_path):
    make_image(tmp_path / "Images" / "x.jpg")
    path = write_lines(tmp_path / "captions.txt", "image,caption", "x.jpg,a cat .")
    result = read_captions(path, images_dir=tmp_path / "Images")
    assert [(i.key, i.captions) for i in result.items] == [("x.jpg", ["a cat ."])]


def test_user_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_captions(tmp_path / "nope.csv")
    path = write_csv(tmp_path / "c.csv", "file_name,caption\na.png,a cat\nb.png,a dog\n")
    with pytest.raises(InputError, match="unknown format 'tsv'"):
        read_captions(path, fmt="tsv")
    with pytest.raises(InputError, match="no such folder"):
        read_captions(path, images_dir=tmp_path / "nope")
    with pytest.raises(InputError, match="none of the 2 images it lists exist under"):
        read_captions(path)


def test_check_image(tmp_path):
    assert check_image(make_image(tmp_path / "ok.png")) is None
    assert check_image(tmp_path / "gone.png") == "missing"
    (tmp_path / "folder.png").mkdir()
    assert check_image(tmp_path / "folder.png") == "missing"
    assert check_image(make_unreadable(tmp_path / "text.jpg")) == "unreadable"
    (tmp_path / "empty.png").write_bytes(b"")
    assert check_image(tmp_path / "empty.png") == "unreadable"
