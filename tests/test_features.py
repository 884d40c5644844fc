"""The feature cache: reused across runs, recomputed when the backbone, its weights, the
preprocessing or an image's content change; unreadable images reported, never cached."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from labeler.model.preprocessing import Preprocessing
from labeler.model.show_tell import ModelConfig, ShowAndTell
from labeler.training.features import FeatureCache, cache_key, compute_features, encoder_stages

PREP = Preprocessing(resize=32, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _model(backbone="resnet18", seed=0, preprocessing=PREP):
    torch.manual_seed(seed)
    config = ModelConfig(backbone=backbone, embed_size=8, hidden_size=8, vocab_size=10,
                         preprocessing=preprocessing)  # fmt: skip
    return ShowAndTell(config).eval()


class CountingCalls:
    """Wraps model.features and counts the images it is given."""

    def __init__(self, model):
        self.images = 0
        self.inner = model.features
        model.features = self

    def __call__(self, images):
        self.images += images.size(0)
        return self.inner(images)


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    paths = []
    for i in range(6):
        path = folder / f"p{i}.png"
        Image.new("RGB", (40, 36), (40 * i, 200 - 30 * i, 90)).save(path)
        paths.append(path)
    return paths


def _run(model, paths, cache):
    return compute_features(model, paths, cache_dir=cache, workers=0, batch_size=4)


def test_a_second_run_computes_no_features(pictures, tmp_path):
    model = _model()
    counter = CountingCalls(model)
    first = _run(model, pictures, tmp_path / "cache")
    assert (first.computed, first.reused, counter.images) == (6, 0, 6)
    again = _run(model, pictures, tmp_path / "cache")
    assert (again.computed, again.reused, counter.images) == (0, 6, 6)
    assert torch.equal(first.features, again.features)
    fresh = compute_features(model, pictures, cache_dir=None, workers=0)
    assert torch.allclose(fresh.features, first.features, atol=1e-5)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_changed_preprocessing_weights_or_backbone_recompute(pictures, tmp_path):
    cache = tmp_path / "cache"
    _run(_model(), pictures, cache)
    variants = [
        _model(preprocessing=dataclasses.replace(PREP, resize=40)),  # a different crop
        _model(preprocessing=dataclasses.replace(PREP, mean=(0.5, 0.5, 0.5))),
        _model(seed=1),  # other random weights
        _model(backbone="mobilenet_v3_large"),
    ]
    for model in variants:
        counter = CountingCalls(model)
        result = _run(model, pictures, cache)
        assert (result.computed, result.reused, counter.images) == (6, 0, 6)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 5


def test_an_edited_image_is_recomputed_and_a_renamed_one_is_not(pictures, tmp_path):
    model = _model()
    _run(model, pictures, tmp_path / "cache")
    Image.new("RGB", (40, 36), (255, 0, 0)).save(pictures[2])
    pictures[4].rename(pictures[4].with_name("renamed.png"))
    pictures[4] = pictures[4].with_name("renamed.png")
    counter = CountingCalls(model)
    result = _run(model, pictures, tmp_path / "cache")
    assert (result.computed, result.reused, counter.images) == (1, 5, 1)


def test_unreadable_images_are_reported_and_never_cached(pictures, tmp_path):
    broken = pictures[0].with_name("broken.png")
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [*pictures[:2], broken, pictures[0].with_name("gone.png")]
    model = _model()
    result = _run(model, paths, tmp_path / "cache")
    assert sorted(result.failed) == [2, 3] and result.computed == 2
    assert torch.count_nonzero(result.features[2:]) == 0
    assert _run(model, paths, tmp_path / "cache").reused == 2


def test_a_damaged_shard_costs_a_recomputation_not_the_run(pictures, tmp_path):
    model = _model()
    first = _run(model, pictures, tmp_path / "cache")
    for shard in (tmp_path / "cache").rglob("shard-*.pt"):
        shard.write_bytes(b"garbage")
    assert _run(model, pictures, tmp_path / "cache").computed == 6
    key, info = cache_key(model)
    assert key == first.key and info["backbone"] == "resnet18"
    assert len(FeatureCache(tmp_path / "cache", key).load()) == 6


def test_encoder_stages_end_with_the_last_block():
    resnet = _model().encoder.backbone
    assert encoder_stages(resnet) == [resnet.conv1, resnet.bn1, resnet.layer1, resnet.layer2,
                                      resnet.layer3, resnet.layer4]  # fmt: skip
    mobile = _model(backbone="mobilenet_v3_large").encoder.backbone
    assert encoder_stages(mobile)[-1] is mobile.classifier[0]
    assert encoder_stages(mobile)[0] is mobile.features[0]
