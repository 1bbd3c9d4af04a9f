"""Image files as pixels: decoding (a bad file is a DatasetError), a decoded-image cache, and ``ImageDataset``.

Readers (data/datasets.py) say *which* files a dataset has; this module turns those
files into images and tensors for a DataLoader.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from embdistill.data.errors import DatasetError
from embdistill.data.transforms import FitLongerSide

if TYPE_CHECKING:
    from embdistill.data.datasets import ImageList

__all__ = ["DecodedImageCache", "ImageDataset", "decode_rgb"]


# --------------------------------------------------------------------------- decoding


def decode_rgb(path: Path) -> Image.Image:
    """Fully decode an image; a truncated or non-image file raises DatasetError."""
    try:
        with Image.open(path) as img:
            img.load()  # JPEG's verify() checks nothing, so decode for real
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"cannot decode image {path}: {err}. Set data.skip_bad_images=true to find "
            "and exclude unreadable files before training"
        ) from err


class DecodedImageCache:
    """Images decoded once and kept in memory, aspect kept, ``side`` ("shorter" or "longer") resized to ``size``.

    On a 2-core machine JPEG decoding can cost more than a training step of a small
    student, so decode each file once and keep uint8 pixels. Use a ``size`` at least
    as large as the transform's resize (e.g. 256 for 224 crops), on the side the
    transform fixes: the shorter one for ``crop`` and ``squash`` (both sides end up
    at least ``size``), the longer one for ``pad`` (a wide car is kept at its own
    size instead of being upscaled to twice the pixels it will use).

    With DataLoader workers, call :meth:`fill` in the main process *before* the loader
    starts its workers: forked workers then share the pixel buffers copy-on-write
    (reference counting touches only the small array headers, not the pixel data).
    A cache filled lazily inside workers is private to each worker, so memory grows
    per worker and nothing is shared; with the "spawn" start method the cache is
    pickled into every worker, i.e. copied.
    """

    def __init__(self, size: int, side: str = "shorter") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"DecodedImageCache size must be a positive int, got {size!r}")
        if side not in ("shorter", "longer"):
            raise ValueError(f"DecodedImageCache side must be 'shorter' or 'longer', got {side!r}")
        self.size = size
        self.side = side
        self._pixels: dict[str, np.ndarray] = {}

    def _decode(self, path: Path) -> np.ndarray:
        img = decode_rgb(path)
        if self.side == "shorter":
            img = TF.resize(img, self.size, interpolation=TF.InterpolationMode.BILINEAR)
        else:
            img = FitLongerSide(self.size)(img)
        return np.asarray(img, dtype=np.uint8)

    def get(self, path: str | Path) -> Image.Image:
        """The decoded, resized RGB image; decodes and stores it on first use."""
        key = str(path)
        pixels = self._pixels.get(key)
        if pixels is None:
            pixels = self._pixels[key] = self._decode(Path(path))
        return Image.fromarray(pixels)

    def fill(self, paths: Iterable[str | Path], num_workers: int = 0) -> None:
        """Decode every path not cached yet; threads help because PIL releases the GIL."""
        todo = list(dict.fromkeys(str(p) for p in paths if str(p) not in self._pixels))
        if num_workers > 0:
            with ThreadPoolExecutor(num_workers) as pool:
                decoded = list(pool.map(lambda p: self._decode(Path(p)), todo))
        else:
            decoded = [self._decode(Path(p)) for p in todo]
        self._pixels.update(zip(todo, decoded))

    @property
    def nbytes(self) -> int:
        """Bytes of pixel data held (the dictionary overhead is not counted)."""
        return sum(a.nbytes for a in self._pixels.values())

    def __len__(self) -> int:
        return len(self._pixels)

    def __contains__(self, path: object) -> bool:
        return str(path) in self._pixels


# --------------------------------------------------------------------------- dataset


class ImageDataset(Dataset):
    """Images of an :class:`ImageList` as ``(image_tensor, label, index)``.

    ``index`` is the position in ``self.items`` (after skipping bad files), so a
    caller can look up per-image data such as precomputed teacher embeddings.
    Without a ``transform`` the image becomes a float tensor in [0, 1].

    ``skip_bad=True`` decodes every file once up front (slow on large datasets),
    excludes the ones that fail and lists them in ``self.skipped`` for the caller
    to log. Labels are left unchanged, so a class can end up with fewer images.
    """

    def __init__(
        self,
        items: ImageList,
        transform: Callable[[Image.Image], Any] | None = None,
        cache: DecodedImageCache | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.items = items
        self.transform = transform
        self.cache = cache
        self.skipped: list[tuple[Path, str]] = []
        if skip_bad:
            self.skipped = self.find_bad_files()
            bad = {p for p, _ in self.skipped}
            self.items = items.subset([i for i, p in enumerate(items.paths) if p not in bad])

    def find_bad_files(self, num_workers: int = 0) -> list[tuple[Path, str]]:
        """Every file in ``self.items`` that fails to decode, with the reason."""

        def check(path: Path) -> str | None:
            try:
                decode_rgb(path)
            except DatasetError as err:
                return str(err.__cause__ or err)
            return None

        paths = list(self.items.paths)
        if num_workers > 0:
            with ThreadPoolExecutor(num_workers) as pool:
                reasons = list(pool.map(check, paths))
        else:
            reasons = [check(p) for p in paths]
        return [(p, r) for p, r in zip(paths, reasons) if r is not None]

    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, index: int) -> Image.Image:
        """The decoded RGB image, before any transform (from the cache when there is one)."""
        path = self.items.paths[index]
        return self.cache.get(path) if self.cache is not None else decode_rgb(path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.load_image(index)
        tensor = self.transform(image) if self.transform is not None else TF.to_tensor(image)
        return tensor, int(self.items.labels[index]), int(index)
