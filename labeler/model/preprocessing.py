"""The image preprocessing a backbone's weights expect, saved with the model.

It is split in two on purpose. `to_tensor` (resize the shorter side, centre-crop) runs where images
are decoded, on CPU workers, and returns uint8: a quarter of the bytes of float32 to batch, pin and
copy to the GPU. `normalize` (scale to [0, 1], subtract the mean, divide by the std) runs on the
batch, on the model's device. Together they equal torchvision's `weights.transforms()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from labeler.errors import ModelError


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

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> uint8 tensor (3, crop, crop), resized and centre-cropped."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        mode = InterpolationMode(self.interpolation)
        image = TF.resize(image, self.resize, interpolation=mode, antialias=True)
        image = TF.center_crop(image, self.crop)
        return TF.pil_to_tensor(image)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) pixels -> normalised float32 on the same device."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std
