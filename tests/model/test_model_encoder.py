"""Encoder: every backbone name, ImageNet weights from the hub cache or a local file, freezing.

No test downloads anything: TORCH_HOME points at a per-test folder (tests/conftest.py) and the
downloader is replaced where a download would be attempted.
"""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision import models

from labeler.errors import ModelError
from labeler.model.encoder import (
    BACKBONES,
    ImageEncoder,
    fetch_imagenet_weights,
    hub_checkpoint_path,
)
from labeler.model.show_tell import ModelConfig, build_model

FEATURES = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "vgg16": 4096,
    "mobilenet_v3_large": 1280,
    "efficientnet_b0": 1280,
    "efficientnet_b3": 1536,
    "convnext_tiny": 768,
    "efficientnet_lite0": 1280,
    "efficientnet_lite1": 1280,
    "efficientnet_lite2": 1280,
}


# One backbone per family runs a forward pass; the rest of each family is built the same way.
FAMILY_HEADS = {
    "resnet18",
    "vgg16",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "efficientnet_lite0",
}


def test_every_backbone_builds_and_gives_the_embedding():
    assert set(FEATURES) == set(BACKBONES)
    for name, size in FEATURES.items():
        with torch.device("meta"):  # the real graph and shapes, without allocating weights
            encoder = ImageEncoder(name, 32)
            assert encoder.feature_size == size, name
            assert encoder.embed(torch.empty(2, size)).shape == (2, 32)
            if name in FAMILY_HEADS:
                assert encoder.features(torch.empty(2, 3, 64, 64)).shape == (2, size), name


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large"])
def test_small_backbones_run_for_real(name):
    torch.manual_seed(0)
    encoder = ImageEncoder(name, 16).eval()
    with torch.inference_mode():
        features = encoder.features(torch.randn(2, 3, 48, 48))
        embedding = encoder.embed(features)
    assert features.shape == (2, FEATURES[name])
    assert embedding.shape == (2, 16) and torch.isfinite(embedding).all()
    # LayerNorm: every embedding has zero mean and unit variance, whatever the batch
    assert embedding.mean(dim=1) == pytest.approx([0.0, 0.0], abs=1e-5)


def test_frozen_backbone_stays_fixed_and_in_eval_mode():
    encoder = ImageEncoder("resnet18", 8).train()
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    assert all(p.requires_grad for p in encoder.project.parameters())
    assert not encoder.backbone.training and encoder.project.training
    features = encoder.features(torch.randn(2, 3, 32, 32))
    assert not features.requires_grad
    trainable = ImageEncoder("resnet18", 8, frozen=False).train()
    assert trainable.backbone.training
    assert trainable.features(torch.randn(2, 3, 32, 32)).requires_grad


def test_preprocessing_follows_the_backbone_weights():
    assert ModelConfig(backbone="efficientnet_b3", vocab_size=5).preprocessing.crop == 300
    p = ModelConfig(backbone="efficientnet_b3", vocab_size=5).preprocessing
    assert (p.resize, p.interpolation) == (320, "bicubic")
    p = ModelConfig(backbone="resnet50", vocab_size=5).preprocessing
    assert (p.resize, p.crop, p.mean, p.std) == (
        232,
        224,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )


def test_unknown_backbone_or_weights_name():
    with pytest.raises(ModelError, match="unknown backbone 'resnet9'; choose one of resnet18"):
        ModelConfig(backbone="resnet9", vocab_size=5)
    with pytest.raises(
        ModelError, match="has no weights 'IMAGENET9'; choose one of DEFAULT, IMAGENET1K_V1"
    ):
        fetch_imagenet_weights("resnet18", "IMAGENET9")


def test_missing_imagenet_weights_name_the_file_and_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    with pytest.raises(ModelError) as info:
        fetch_imagenet_weights("resnet18", download=False)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(folder) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "\n" not in message

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError, match="download failed: .*Name or service not known") as info:
        build_model(ModelConfig(backbone="resnet18", vocab_size=5), pretrained="DEFAULT")
    assert f"resnet18-f37072fd.pth is not in {folder}" in str(info.value)


def _saved_backbone(path, name="mobilenet_v3_large"):
    torch.manual_seed(3)
    state = models.get_model(name, weights=None).state_dict()
    torch.save(state, path)
    return state


def test_imagenet_weights_from_the_hub_cache_without_network(monkeypatch):
    url = models.MobileNet_V3_Large_Weights.IMAGENET1K_V2.url
    cached = hub_checkpoint_path(url)
    cached.parent.mkdir(parents=True)
    state = _saved_backbone(cached)
    monkeypatch.setattr(torch.hub, "download_url_to_file", pytest.fail)
    config = ModelConfig(backbone="mobilenet_v3_large", vocab_size=5)
    model = build_model(config, pretrained="IMAGENET1K_V2")
    assert torch.equal(model.encoder.backbone.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(model.encoder.backbone.classifier[0].weight, state["classifier.0.weight"])
    assert model.config.backbone_weights == "MobileNet_V3_Large_Weights.IMAGENET1K_V2"
    assert model.config.preprocessing.resize == 232


def test_weights_from_a_local_file(tmp_path):
    path = tmp_path / "backbone.pth"
    state = _saved_backbone(path)
    model = build_model(ModelConfig(backbone="mobilenet_v3_large", vocab_size=5), weights_file=path)
    assert torch.equal(model.encoder.backbone.classifier[0].bias, state["classifier.0.bias"])
    assert model.config.backbone_weights == "file:backbone.pth"
    with pytest.raises(ModelError, match="does not hold resnet18 weights"):
        build_model(ModelConfig(backbone="resnet18", vocab_size=5), weights_file=path)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read weights file"):
        build_model(
            ModelConfig(backbone="resnet18", vocab_size=5), weights_file=tmp_path / "junk.pth"
        )
    with pytest.raises(ModelError, match="weights file not found"):
        build_model(
            ModelConfig(backbone="resnet18", vocab_size=5), weights_file=tmp_path / "nope.pth"
        )
