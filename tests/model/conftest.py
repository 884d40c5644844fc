"""Tiny real models for the model tests: a resnet18 encoder on 32-pixel images, a small LSTM.

The decoder's weights are scaled up so the random model's next-word distributions are peaked and
depend on the image: with default initialisation every word is about equally likely, every image
gets the same caption, and every comparison would be between near-ties.
"""

from __future__ import annotations

import pytest
import torch

from labeler.model.show_tell import ModelConfig, ShowAndTell
from labeler.model.vocab import Vocabulary

CAPTIONS = [
    "A dog runs on the grass.",
    "A black cat sits on a red mat.",
    "Two dogs play with a ball in the park.",
    "A man rides a bike down the street.",
]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tensors are tiny: with several threads, synchronising them costs more than it
    saves, and on a machine whose cores are busy it made this folder's tests twice as slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_vocab() -> Vocabulary:
    return Vocabulary.build(CAPTIONS)


def _make_tiny_model(vocab: Vocabulary, *, seed: int = 0) -> ShowAndTell:
    torch.manual_seed(seed)
    config = ModelConfig(
        backbone="resnet18", embed_size=16, hidden_size=24, vocab_size=len(vocab), dropout=0.1
    )
    model = ShowAndTell(config)
    with torch.no_grad():
        model.decoder.lstm.weight_ih_l0.mul_(6.0)  # the image step sets a distinct state
        model.decoder.lstm.weight_hh_l0.mul_(2.0)  # which the later steps remember
        model.decoder.out.weight.mul_(6.0)  # peaked next-word distributions
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_model():
    """A fresh tiny model, for tests that change it."""
    return _make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tiny_vocab) -> ShowAndTell:
    """Shared by many tests: do not modify it."""
    return _make_tiny_model(tiny_vocab)


@pytest.fixture(scope="session")
def tiny_features() -> torch.Tensor:
    """(6, 512) backbone features for 6 images: random ones differ more than random images'."""
    return torch.randn(6, 512, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def tiny_images() -> torch.Tensor:
    """(6, 3, 32, 32) uint8 pixels, as `preprocess` would return them (smaller, for speed)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=generator)
