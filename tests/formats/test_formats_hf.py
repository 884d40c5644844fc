"""Hugging Face imagefolder: metadata.jsonl read back by `datasets`, offline."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from formats.test_formats_rows import make_row
from PIL import Image

from labeler.errors import InputError
from labeler.formats.hf import write_hf


def test_datasets_imagefolder_reads_the_metadata_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    root = tmp_path / "set"
    rows = [
        make_row(1, root=root, text="a red square, small"),
        make_row(2, root=root, path="sub dir/é 2.png", text="a blue square"),
        replace(make_row(3, root=root), review_text="a green one", review_outcome="edited"),
    ]
    for row in rows:
        (root / row.path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 3), (200, 10, 10)).save(root / row.path)
    Image.new("RGB", (4, 3)).save(root / "not_exported.png")  # images without a line are left out

    result = write_hf(iter(rows), root)
    assert result.paths == [root / "metadata.jsonl"] and result.count == 3
    import datasets  # slow to import: only here

    dataset = datasets.load_dataset(
        "imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"), split="train"
    )
    assert dataset.num_rows == 3
    assert sorted(dataset["caption"]) == sorted(r.text for r in rows)
    assert "confidence" in dataset.column_names and "image" in dataset.column_names
    assert sorted(dataset["p_accept"]) == sorted(r.p_accept for r in rows)
    example = next(e for e in dataset if e["image_id"] == 3)
    assert example["reviewed_caption"] == "a green one" and example["outcome"] == "edited"
    assert example["image"].size == (4, 3)


def test_file_names_are_relative_and_images_outside_are_refused(tmp_path):
    root = tmp_path / "set"
    root.mkdir()
    write_hf([make_row(1, root=root, path="a/b.png")], root / "metadata.jsonl")
    line = json.loads((root / "metadata.jsonl").read_text(encoding="utf-8"))
    assert line["file_name"] == "a/b.png"
    inside = root / "a"
    inside.mkdir()
    with pytest.raises(InputError, match=r"b\.png \(id 1\) is not under .*dataset root"):
        write_hf([make_row(1, root=root, path="b.png")], inside)
    assert not (inside / "metadata.jsonl").exists()
