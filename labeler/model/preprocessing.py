"""The image preprocessing a backbone's weights expect, saved with the model.

It is split in two on purpose. `to_tensor` (resize the shorter side, centre-crop) runs where images
are decoded, on CPU workers, and returns uint8: a quarter of the bytes of float32 to batch, pin and
copy to the GPU. `normalize` (scale to [0, 1], subtract the mean, divide by the std) runs on the
batch, on the model's device. Together they equal torchvision's `weights.transforms()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from labeler.errors import ModelError

if TYPE_CHECKING:
    import torch

# torchvision's InterpolationMode values -> Pillow's filters, as torchvision maps them for PIL.
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    resize: int  # the shorter side is resized to this many pixels
    crop: int  # then the centre crop x crop is kept; the model input is (3, crop, crop)
    mean: tuple[float, float, float]  # per-channel mean of [0, 1] pixels, subtracted
    std: tuple[float, float, float]  # per-channel std, divided by
    interpolation: str = "bilinear"  # a torchvision InterpolationMode value

    @classmethod
    def from_transforms(cls, transforms) -> Preprocessing:
        """From torchvision's ImageClassification preset (`weights.transforms()`)."""
        return cls(
            resize=int(transforms.resize_size[0]),
            crop=int(transforms.crop_size[0]),
            mean=tuple(float(x) for x in transforms.mean),
            std=tuple(float(x) for x in transforms.std),
            interpolation=transforms.interpolation.value,
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        try:
            return cls(
                resize=int(data["resize"]),
                crop=int(data["crop"]),
                mean=tuple(float(x) for x in data["mean"]),
                std=tuple(float(x) for x in data["std"]),
                interpolation=str(data.get("interpolation", "bilinear")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"preprocessing settings are incomplete: {exc}") from None

    def to_array(self, image: Image.Image) -> np.ndarray:
        """The same pixels as `to_tensor`, as a uint8 numpy array (3, crop, crop), computed with
        Pillow alone: the caption job's loader processes then never import torch."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize, int(self.resize * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != (width, height):
            image = image.resize(size, _PIL_FILTERS[self.interpolation])
        if min(size) < self.crop:  # torchvision pads here; no preset does this
            return self.to_tensor(image).numpy()
        top = int(round((size[1] - self.crop) / 2.0))
        left = int(round((size[0] - self.crop) / 2.0))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))  # (3, crop, crop)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> uint8 tensor (3, crop, crop), resized and centre-cropped."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if image.mode != "RGB":
            image = image.convert("RGB")
        mode = InterpolationMode(self.interpolation)
        image = TF.resize(image, self.resize, interpolation=mode, antialias=True)
        image = TF.center_crop(image, self.crop)
        return TF.pil_to_tensor(image)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) pixels -> normalised float32 on the same device."""
        import torch

        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std
