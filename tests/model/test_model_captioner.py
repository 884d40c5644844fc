from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision import models

from labeler.errors import ModelError
from labeler.model.captioner import Captioner, DecodeSettings, ShowTellCaptioner, pick_device
from labeler.model.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def captioner(tmp_path_factory, tiny_model, tiny_vocab) -> ShowTellCaptioner:
    path = tmp_path_factory.mktemp("captioner") / "model.pt"
    save_checkpoint(path, tiny_model, tiny_vocab, training={})
    return ShowTellCaptioner.from_checkpoint(path, device="cpu")


def test_is_a_captioner_named_after_its_checkpoint(captioner):
    assert isinstance(captioner, Captioner)
    assert len(captioner.identity) == 64
    assert captioner.name == f"show-tell-{captioner.identity[:6]}"
    assert captioner.input_size == (224, 224)
    assert captioner.device == torch.device("cpu") and not captioner.autocast


@pytest.mark.parametrize(
    ("mode", "size"), [("RGB", (300, 200)), ("L", (64, 500)), ("RGBA", (1, 1))]
)
def test_preprocess_matches_torchvision_transforms(captioner, mode, size):
    image = Image.effect_noise(size, 60).convert(mode)
    pixels = captioner.preprocess(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224)
    ours = captioner.preprocessing.normalize(pixels.unsqueeze(0))[0]
    reference = models.ResNet18_Weights.DEFAULT.transforms()(image.convert("RGB"))
    assert torch.allclose(ours, reference, atol=0.02)  # uint8 rounding of the resized pixels


def test_caption_drafts_and_their_confidence_fields(captioner, tiny_vocab, tiny_images):
    results = captioner.caption(tiny_images, DecodeSettings(beam_size=3, max_len=10, n_best=3))
    assert len(results) == len(tiny_images)
    for image in results:
        assert len(image.drafts) == 3
        assert len({tuple(d.token_ids) for d in image.drafts}) == 3
        assert image.margin == image.drafts[0].log_likelihood - image.drafts[1].log_likelihood
        for d in image.drafts:
            assert d.words == [tiny_vocab.itos[i] for i in d.token_ids]
            assert d.text == tiny_vocab.detokenize(d.words)
            assert d.num_tokens == len(d.words) + d.finished == len(d.token_logprobs)
            assert d.log_likelihood == math.fsum(d.token_logprobs)
            assert d.confidence == pytest.approx(math.exp(d.log_likelihood / d.num_tokens))
            assert 0.0 < d.confidence <= 1.0


def test_margin_uses_the_runner_up_even_when_only_the_best_is_returned(captioner, tiny_images):
    three = captioner.caption(tiny_images[:2], DecodeSettings(beam_size=3, max_len=10, n_best=3))
    one = captioner.caption(tiny_images[:2], DecodeSettings(beam_size=3, max_len=10, n_best=1))
    for a, b in zip(three, one, strict=True):
        assert len(b.drafts) == 1 and b.drafts[0] == a.drafts[0] and b.margin == a.margin
    greedy = captioner.caption(tiny_images[:2], DecodeSettings(beam_size=1, max_len=10))
    assert [g.margin for g in greedy] == [None, None]


def test_uint8_and_normalised_float_input_agree(captioner, tiny_images):
    settings = DecodeSettings(beam_size=2, max_len=8, n_best=2)
    normalised = captioner.preprocessing.normalize(tiny_images[:2])
    assert captioner.caption(tiny_images[:2], settings) == captioner.caption(normalised, settings)


def test_batch_equals_one_image_at_a_time(captioner, tiny_images):
    settings = DecodeSettings(beam_size=3, max_len=8, n_best=2)
    together = captioner.caption(tiny_images, settings)
    for i, image in enumerate(together):
        [alone] = captioner.caption(tiny_images[i : i + 1], settings)
        assert [d.token_ids for d in image.drafts] == [d.token_ids for d in alone.drafts]
        for a, b in zip(image.drafts, alone.drafts, strict=True):
            assert a.log_likelihood == pytest.approx(b.log_likelihood, abs=1e-4)


def test_bad_input_and_devices(captioner):
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        captioner.caption(torch.zeros(3, 32, 32, dtype=torch.uint8), DecodeSettings())
    with pytest.raises(ModelError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


def test_encoder_slices_on_cpu_give_the_whole_batch_embedding(captioner, tiny_images, monkeypatch):
    import labeler.model.captioner as module

    monkeypatch.setattr(module, "CPU_ENCODER_SLICE", len(tiny_images))
    whole = captioner._encode(tiny_images)
    monkeypatch.setattr(module, "CPU_ENCODER_SLICE", 4)  # 6 images: slices of 4 and 2
    sliced = captioner._encode(tiny_images)
    assert sliced.shape == whole.shape
    torch.testing.assert_close(sliced, whole, atol=1e-5, rtol=1e-5)
