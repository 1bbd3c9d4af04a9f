"""Training images as numbered augmented *views*.

Image ``i`` under view ``v`` always gets the same random crop and flip, whatever
process loads it. That makes the teacher's output a pure function of ``(i, v)``,
so it can be computed once and cached (or banked on disk), and a run with the cache
reproduces a run without it whenever both see the same views.

A loader worker does only the per-image work (draw the box, crop, resize, flip) and hands
out uint8 pixels; :func:`to_input` normalises whole batches where the network runs. On a
2-core machine the worker competes with training for the cores, and a small student at
96 px trains faster than one worker could render float views (issue #21, item 7).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from embdistill.data.images import ImageDataset
from embdistill.data.transforms import Normalization, PadToSquare, check_resize, draw_box, render_box


def crop_seed(seed: int, index: int, view: int) -> int:
    """The seed of one image's crop and flip in one view: 63 bits that differ for every (seed, image, view).

    ``seed`` is the run's augmentation seed (``loaders.augmentation_seed``)."""
    return (seed * 1_000_003 + index * 7_919 + view * 104_729 + 0x9E3779B97F4A7C15) % (2**63 - 1)


@dataclass(frozen=True)
class ViewCrop:
    """One random crop box and flip, rendered at the student's size and at the teacher's.

    The box is drawn like ``RandomResizedCrop(scale=scale)`` followed by a horizontal
    flip (same random draws, in the same order), and each network gets that box
    resized straight to its own input size. So a 96-px student and a 224-px teacher
    see exactly the same part of the picture, and the student's crop costs what a
    96-px crop costs, whatever the teacher's size. ``resize`` (``data.resize``) makes
    the box square as the evaluation transform makes the image square (see
    data/transforms.py ``draw_box``, ``render_box``).
    """

    student_size: int
    teacher_size: int
    normalization: Normalization
    scale: tuple[float, float] = (0.16, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    resize: str = "crop"

    def __post_init__(self) -> None:
        check_resize(self.resize)

    def teacher_signature(self) -> str:
        """What decides the teacher's crop, for a teacher bank's key (the student's size does not).

        ``resize`` appears only when it is not ``crop``, so the banks filled before it existed stay valid.
        """
        resize = f", resize={self.resize}" if self.resize != "crop" else ""
        return (f"ViewCrop(size={self.teacher_size}, scale={self.scale}, ratio={tuple(round(r, 6) for r in self.ratio)}, "
                f"bilinear+antialias, hflip p=0.5, mean={self.normalization.mean}, std={self.normalization.std}{resize})")

    def draw(self, image: Image.Image, generator: torch.Generator | None = None) -> tuple[tuple[int, int, int, int], bool]:
        """The random part: a (top, left, height, width) box and whether to flip, from ``generator``
        (None: torch's global RNG)."""
        box = draw_box(image, self.scale, self.ratio, self.resize, generator)
        return box, bool(torch.rand(1, generator=generator) < 0.5)

    def render(self, image: Image.Image, box: tuple[int, int, int, int], flip: bool, size: int) -> Tensor:
        """The view as uint8 (3, size, size) pixels, which :func:`to_input` normalises by the batch.

        ``pad`` is the exception: its border must be exactly 0 after normalisation (the mean
        colour, :class:`PadToSquare`), a value no uint8 pixel has, so those views are normalised
        and padded here, as float, and :func:`to_input` only moves them.
        """
        crop = render_box(image, box, size, self.resize)
        if flip:
            crop = TF.hflip(crop)
        pixels = TF.pil_to_tensor(crop)
        return PadToSquare(size)(normalize(pixels, self.normalization)) if self.resize == "pad" else pixels


class ViewDataset(Dataset):
    """Yields ``(student_image, teacher_image, label, index, view)``.

    The images are uint8 pixels (float for ``pad``, see :meth:`ViewCrop.render`): pass a
    batch of them through :func:`to_input` with ``crop.normalization`` before a network.
    Both images are the same crop (see :class:`ViewCrop`); ``teacher_image`` is the
    very same tensor when the sizes agree and nothing is degraded. ``degrade``
    (cross-quality distillation) gives the student a degraded copy cut by the same
    box. With ``teacher_images=False`` (no teacher, or its outputs come from a bank)
    the teacher's crop is not rendered and an empty tensor stands in for it.
    ``set_view`` is called before each epoch; DataLoader workers receive the dataset
    afresh at every epoch, so they see the new view.
    """

    def __init__(
        self,
        images: ImageDataset,
        crop: ViewCrop,
        seed: int,
        degrade: Callable[[Image.Image], Image.Image] | None = None,
        labels: Tensor | None = None,
        teacher_images: bool = True,
    ) -> None:
        self.images = images
        self.crop = crop
        self.seed = seed
        self.degrade = degrade
        self.labels = labels  # overrides the dataset's labels (-1 marks an unlabelled image)
        self.teacher_images = teacher_images
        self.view = 0

    def set_view(self, view: int) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int, int, int]:
        image = self.images.load_image(index)
        label = int(self.images.items.labels[index] if self.labels is None else self.labels[index])
        # A private generator: the same draws as torch's global RNG seeded alike, without the cost of forking it.
        box, flip = self.crop.draw(image, torch.Generator().manual_seed(crop_seed(self.seed, index, self.view)))
        c = self.crop
        student = c.render(image if self.degrade is None else self.degrade(image), box, flip, c.student_size)
        if not self.teacher_images:
            teacher = torch.empty(0)
        elif self.degrade is None and c.teacher_size == c.student_size:
            teacher = student
        else:
            teacher = c.render(image, box, flip, c.teacher_size)
        return student, teacher, label, index, self.view


def normalize(pixels: Tensor, normalization: Normalization) -> Tensor:
    """uint8 pixels (..., 3, H, W) -> float32 ``(x / 255 - mean) / std``, exactly ``TF.normalize(TF.to_tensor(x))``.

    The same float32 operations in the same order. The divisors are tensors, not Python
    numbers: CUDA divides by a Python number as a multiplication by its reciprocal, which
    can differ in the last bit.
    """
    scale, mean, std = _constants(normalization, pixels.device)
    return pixels.float().div_(scale).sub_(mean).div_(std)  # in place: one float32 buffer, not three


@lru_cache(maxsize=16)
def _constants(normalization: Normalization, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """255, mean and std as float32 tensors on ``device``, made once rather than per batch."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1).to(device) for v in (normalization.mean, normalization.std))
    return torch.tensor(255.0, device=device), mean, std


def to_input(
    batch: Tensor, normalization: Normalization, device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """A loader's batch of views as a network's input: on ``device``, normalised, in ``memory_format``.

    The uint8 pixels travel (a quarter of float32's bytes) and are normalised once per batch
    on ``device``, not per image in the loader worker. Float batches (``pad`` views, see
    :meth:`ViewCrop.render`) are normalised already and are only moved.
    """
    x = batch.to(device).contiguous(memory_format=memory_format)
    return x if x.is_floating_point() else normalize(x, normalization)
