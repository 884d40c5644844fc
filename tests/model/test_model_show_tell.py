from __future__ import annotations

import pytest
import torch

from labeler.errors import ModelError
from labeler.model.show_tell import ModelConfig


def padded(vocab, captions):
    """Captions -> (B, T) ids from <start> to <end> then pad, and lengths (B,)."""
    ids = [vocab.encode(c, add_start_end=True) for c in captions]
    width = max(map(len, ids))
    rows = [row + [vocab.pad_id] * (width - len(row)) for row in ids]
    return torch.tensor(rows), torch.tensor([len(row) for row in ids])


def test_teacher_forced_forward_equals_step_by_step(tiny_model, tiny_vocab, tiny_features):
    captions, lengths = padded(tiny_vocab, ["a dog runs on the grass", "a cat", "two dogs play ."])
    feats = tiny_features[:3]
    with torch.inference_mode():
        logits = tiny_model(feats, captions, lengths)  # (3, T-1, V)
        assert logits.shape == (3, captions.size(1) - 1, len(tiny_vocab))
        state = tiny_model.init_state(tiny_model.encode(feats))
        for t in range(captions.size(1) - 1):
            log_probs, state = tiny_model.step(captions[:, t], state)
            for b in range(3):
                if t < lengths[b] - 1:  # a real position of caption b
                    want = torch.log_softmax(logits[b, t], dim=0)
                    assert torch.allclose(log_probs[b], want, atol=1e-5)


def test_padding_never_changes_the_real_positions(tiny_model, tiny_vocab, tiny_features):
    captions, lengths = padded(tiny_vocab, ["a black cat sits"])
    extra = torch.cat([captions, torch.full((1, 5), tiny_vocab.pad_id)], dim=1)
    with torch.inference_mode():
        short = tiny_model.token_log_probs(tiny_features[:1], captions, lengths)
        long = tiny_model.token_log_probs(tiny_features[:1], extra, lengths)  # trimmed to lengths
        wide = tiny_model.token_log_probs(
            tiny_features[:2], torch.cat([extra, extra]), torch.tensor([6, 11])
        )
    assert short.shape == (1, 5) and torch.equal(short, long)
    assert torch.allclose(wide[0, :5], short[0], atol=1e-6)
    assert torch.all(wide[0, 5:] == 0.0)  # zero at padding


def test_images_and_cached_features_give_the_same_embedding(tiny_model, tiny_images):
    pixels = tiny_images[:2].float() / 255.0
    with torch.inference_mode():
        from_images = tiny_model.encode(pixels)
        from_features = tiny_model.encode(tiny_model.features(pixels))
    assert from_images.shape == (2, 16)
    assert torch.equal(from_images, from_features)
    with pytest.raises(ValueError, match="expected images"):
        tiny_model.encode(torch.zeros(3))


def test_dropout_only_in_training(make_tiny_model, tiny_vocab, tiny_features):
    model = make_tiny_model(tiny_vocab)
    captions, lengths = padded(tiny_vocab, ["a dog runs"])
    with torch.no_grad():
        model.train()
        assert not torch.equal(
            model(tiny_features[:1], captions, lengths), model(tiny_features[:1], captions, lengths)
        )
        model.eval()
        assert torch.equal(
            model(tiny_features[:1], captions, lengths), model(tiny_features[:1], captions, lengths)
        )


def test_config_round_trip_and_validation():
    config = ModelConfig(
        backbone="resnet18", embed_size=8, hidden_size=12, num_layers=2, vocab_size=9
    )
    data = config.to_dict()
    assert data["preprocessing"] == {
        "resize": 256,
        "crop": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }
    assert ModelConfig.from_dict(data) == config
    with pytest.raises(ModelError, match="unknown fields"):
        ModelConfig.from_dict({**data, "attention": True})
    with pytest.raises(ModelError, match="invalid model config"):
        ModelConfig(vocab_size=0)
    with pytest.raises(ModelError, match="invalid model config"):
        ModelConfig(vocab_size=9, dropout=1.0)
