"""Image transforms for training and evaluation, and image degradation for distillation.

The normalisation must match what the (pre-trained) network was trained with:
torchvision/timm ImageNet models use ImageNet mean/std, the converted
EfficientNet-Lite weights expect TF's (255x - 127) / 128.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from torchvision import transforms as T

__all__ = ["IMAGENET", "NORMALIZATIONS", "TF_LITE", "Degrade", "Normalization", "build_transform"]


@dataclass(frozen=True)
class Normalization:
    """Per-channel (x - mean) / std applied to a [0, 1] tensor from ToTensor."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"Normalization needs 3 means and 3 stds, got {self.mean}, {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalization std must be positive, got {self.std}")


IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# (x - 127/255) / (128/255) == (255x - 127) / 128 for x = pixel / 255 from ToTensor.
TF_LITE = Normalization(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
NORMALIZATIONS: dict[str, Normalization] = {"imagenet": IMAGENET, "tf_lite": TF_LITE}


def build_transform(
    train: bool,
    size: int = 224,
    normalization: Normalization = IMAGENET,
    *,
    resize_ratio: float = 256 / 224,
    degrade: Callable[[Image.Image], Image.Image] | None = None,
) -> T.Compose:
    """PIL image -> normalised (3, size, size) tensor.

    Train: RandomResizedCrop(size, scale=(0.16, 1)) and a horizontal flip.
    Eval: resize the shorter side to ``round(size * resize_ratio)``, centre crop.
    ``degrade`` (PIL -> PIL) runs first, on the full image, so the crop sees the
    degraded picture as a low-quality camera would deliver it.
    """
    if size < 1 or resize_ratio < 1:
        raise ValueError(
            f"build_transform: need size >= 1 and resize_ratio >= 1, got {size}, {resize_ratio}"
        )
    steps: list[Callable] = [degrade] if degrade is not None else []
    if train:
        steps += [T.RandomResizedCrop(size, scale=(0.16, 1.0)), T.RandomHorizontalFlip()]
    else:
        steps += [T.Resize(round(size * resize_ratio)), T.CenterCrop(size)]
    steps += [T.ToTensor(), T.Normalize(normalization.mean, normalization.std)]
    return T.Compose(steps)


@dataclass(frozen=True)
class Degrade:
    """Lower an image's quality but keep its size: for cross-quality distillation.

    ``resolution``: shrink the shorter side to this many pixels (bilinear) and scale
    back up to the original size; images already that small are left as they are.
    ``jpeg_quality``: re-encode as JPEG at this quality (1-95) in memory. With both,
    the JPEG is encoded at the low resolution, like a small photo that was
    compressed and then upscaled for the network. A frozen dataclass, so it pickles
    into DataLoader workers.
    """

    resolution: int | None = None
    jpeg_quality: int | None = None

    def __post_init__(self) -> None:
        if self.resolution is None and self.jpeg_quality is None:
            raise ValueError(
                "Degrade: give resolution and/or jpeg_quality; pass degrade=None for none"
            )
        for name, value, low, high in (("resolution", self.resolution, 1, None),
                                       ("jpeg_quality", self.jpeg_quality, 1, 95)):
            if value is None:
                continue
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if not is_int or value < low or (high is not None and value > high):
                bounds = f"{low}..{high}" if high else f">= {low}"
                raise ValueError(f"Degrade: {name} must be an int {bounds}, got {value!r}")

    def __call__(self, image: Image.Image) -> Image.Image:
        original = image.size
        img = image.convert("RGB")
        shorter = min(original)
        small = self.resolution is not None and self.resolution < shorter
        if small:
            scale = self.resolution / shorter
            low = (max(1, round(original[0] * scale)), max(1, round(original[1] * scale)))
            img = img.resize(low, Image.Resampling.BILINEAR)
        if self.jpeg_quality is not None:
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=self.jpeg_quality)
            buffer.seek(0)
            img = Image.open(buffer).convert("RGB")  # convert() forces the decode
        if small:
            img = img.resize(original, Image.Resampling.BILINEAR)
        return img
