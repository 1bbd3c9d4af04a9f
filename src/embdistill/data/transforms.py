"""Image transforms for training and evaluation, and image degradation for distillation.

The normalisation must match what the (pre-trained) network was trained with:
torchvision/timm ImageNet models use ImageNet mean/std, the converted
EfficientNet-Lite weights expect TF's (255x - 127) / 128, Keras's MobileNet [-1, 1].
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

__all__ = [
    "IMAGENET", "KERAS", "NORMALIZATIONS", "TF_LITE", "Degrade", "Normalization", "Preprocessing", "build_transform", "eval_transform",
    "RESIZE_MODES", "ResizeMode", "FitLongerSide", "PadToSquare", "RandomBox", "check_resize", "draw_box", "render_box",
    "random_resized_crop_params",
]


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
# Keras applications' MobileNet (``preprocess_input``): pixels scaled to [-1, 1], x / 127.5 - 1.
KERAS = Normalization(mean=(0.5,) * 3, std=(0.5,) * 3)
NORMALIZATIONS: dict[str, Normalization] = {"imagenet": IMAGENET, "tf_lite": TF_LITE, "keras": KERAS}
# How a non-square picture becomes the square input (the config's data.resize): cut a centred
# square (``crop``, the default), stretch the whole picture (``squash``), or fit it whole and pad.
ResizeMode = Literal["crop", "squash", "pad"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)


def build_transform(
    train: bool,
    size: int = 224,
    normalization: Normalization = IMAGENET,
    *,
    resize_ratio: float = 256 / 224,
    degrade: Callable[[Image.Image], Image.Image] | None = None,
    resize: str = "crop",
) -> T.Compose:
    """PIL image -> normalised (3, size, size) tensor.

    ``resize`` says how a non-square picture becomes a square input (see
    :data:`RESIZE_MODES`). Eval, ``crop``: resize the shorter side to
    ``round(size * resize_ratio)``, centre crop; ``squash``: the whole image to
    size x size; ``pad``: the whole image, longer side to ``size``, centred on a
    zero (mean-colour) square. Train: a random box and a horizontal flip, the box
    drawn like RandomResizedCrop(scale=(0.16, 1)) and made square the same way
    (:func:`draw_box`, :func:`render_box`). ``degrade`` (PIL -> PIL) runs first, on
    the full image, so the crop sees the degraded picture as a low-quality camera
    would deliver it.
    """
    if size < 1 or resize_ratio < 1:
        raise ValueError(
            f"build_transform: need size >= 1 and resize_ratio >= 1, got {size}, {resize_ratio}"
        )
    check_resize(resize)
    steps: list[Callable] = [degrade] if degrade is not None else []
    if train and resize == "crop":
        steps += [T.RandomResizedCrop(size, scale=(0.16, 1.0)), T.RandomHorizontalFlip()]
    elif train:
        steps += [RandomBox(size, resize), T.RandomHorizontalFlip()]
    elif resize == "crop":
        steps += [T.Resize(round(size * resize_ratio)), T.CenterCrop(size)]
    elif resize == "squash":
        steps += [T.Resize((size, size))]
    else:
        steps += [FitLongerSide(size)]
    steps += [T.ToTensor(), T.Normalize(normalization.mean, normalization.std)]
    if resize == "pad":
        steps += [PadToSquare(size)]
    return T.Compose(steps)


def check_resize(resize: str) -> str:
    """``resize`` if it is one of :data:`RESIZE_MODES`; a ValueError naming the choices otherwise."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def draw_box(
    image: Image.Image,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    resize: str = "crop",
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random (top, left, height, width) box, drawn as ``RandomResizedCrop.get_params`` draws it.

    ``crop`` keeps ``ratio`` as the box's own aspect range (a near-square box, today's
    crops); ``squash`` and ``pad`` take it relative to the image's aspect, so on a
    2:1 car the box is wide too and can cover the whole car, as the eval image does.
    ``generator``: where the random numbers come from (None: torch's global RNG).
    """
    if resize != "crop":
        aspect = image.width / image.height
        ratio = (ratio[0] * aspect, ratio[1] * aspect)
    return random_resized_crop_params(image.height, image.width, scale, ratio, generator)


def random_resized_crop_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``T.RandomResizedCrop.get_params`` (torchvision 0.2x) with a ``generator``: the same draws in the same order.

    torchvision's version draws from torch's global RNG only, which a per-image seed can reach
    only through ``torch.random.fork_rng`` + ``torch.manual_seed`` (a quarter of a millisecond
    per image); a private generator seeded alike yields the same numbers, so the same boxes.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return i, j, h, w
    in_ratio = width / height  # no box fitted in 10 draws: the centred box nearest the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def render_box(image: Image.Image, box: tuple[int, int, int, int], size: int, resize: str = "crop") -> Image.Image:
    """The box resized (bilinear, antialiased) to size x size, or for ``pad`` to longer side ``size``."""
    top, left, height, width = box
    out = [size, size] if resize != "pad" else _fit_longer(height, width, size)
    return TF.resized_crop(image, top, left, height, width, out, interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def _fit_longer(height: int, width: int, size: int) -> list[int]:
    scale = size / max(height, width)
    return [max(1, round(height * scale)), max(1, round(width * scale))]


@dataclass(frozen=True)
class RandomBox:
    """Training crop for ``squash`` and ``pad``: :func:`draw_box` then :func:`render_box`."""

    size: int
    resize: str
    scale: tuple[float, float] = (0.16, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, image: Image.Image) -> Image.Image:
        return render_box(image, draw_box(image, self.scale, self.ratio, self.resize), self.size, self.resize)


@dataclass(frozen=True)
class FitLongerSide:
    """Resize (bilinear, antialiased) so the longer side is ``size``, aspect kept."""

    size: int

    def __call__(self, image: Image.Image) -> Image.Image:
        return render_box(image, (0, 0, image.height, image.width), self.size, "pad")


@dataclass(frozen=True)
class PadToSquare:
    """Centre a normalised (C, h, w) tensor on a size x size square of zeros.

    After normalisation, so the border is exactly 0: the normalisation's mean colour,
    the same value the network's own zero padding feeds it.
    """

    size: int

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        height, width = tensor.shape[-2:]
        if height > self.size or width > self.size:
            raise ValueError(f"PadToSquare({self.size}): the image is {width}x{height}, larger than the square")
        top, left = (self.size - height) // 2, (self.size - width) // 2
        return F.pad(tensor, (left, self.size - width - left, top, self.size - height - top))


class Preprocessing(Protocol):
    """A model's recorded input preprocessing (:class:`embdistill.deploy.export.ExportMetadata` is one)."""

    @property
    def image_size(self) -> int: ...

    @property
    def resize_size(self) -> int: ...

    @property
    def normalization(self) -> Normalization: ...

    @property
    def resize(self) -> str: ...


def eval_transform(preprocessing: Preprocessing) -> T.Compose:
    """PIL image -> the input a stored model expects: evaluation's transform, rebuilt from its record.

    Takes the record, not its fields: a preprocessing option added to the record and
    read here reaches export, quantization calibration, embed, search and serve at once.
    """
    size = preprocessing.image_size
    return build_transform(False, size, preprocessing.normalization, resize_ratio=preprocessing.resize_size / size,
                           resize=preprocessing.resize)


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
