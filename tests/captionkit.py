"""A tiny real Show and Tell checkpoint for the caption job's tests (random weights, resnet18 on
32-pixel crops), with its decoder scaled so drafts differ from image to image."""

from __future__ import annotations

from pathlib import Path

import torch

from labeler.model.checkpoint import save_checkpoint
from labeler.model.preprocessing import Preprocessing
from labeler.model.show_tell import ModelConfig, ShowAndTell
from labeler.model.vocab import Vocabulary

CAPTIONS = [
    "a red square on a white background",
    "a blue circle next to a green triangle",
    "two small yellow stars above a large black cross",
]


def tiny_checkpoint(path: Path, *, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    vocab = Vocabulary.build(CAPTIONS)
    config = ModelConfig(
        backbone="resnet18", embed_size=16, hidden_size=24, vocab_size=len(vocab), dropout=0.0,
        preprocessing=Preprocessing(resize=40, crop=32, mean=(0.485, 0.456, 0.406),
                                    std=(0.229, 0.224, 0.225)),
    )  # fmt: skip
    model = ShowAndTell(config)
    with torch.no_grad():
        model.decoder.lstm.weight_ih_l0.mul_(6.0)
        model.decoder.lstm.weight_hh_l0.mul_(2.0)
        model.decoder.out.weight.mul_(6.0)
    save_checkpoint(path, model.eval(), vocab, training={"note": "random weights, for tests"})
    return path
