"""Image files on disk: list a folder of them, name their class, draw a thumbnail.

One place for what `embdistill embed`, the retrieval grids, the search page and
semi-supervised distillation (``distill.semi_supervised.folder``) all need, so
they agree on which files count as images and how a thumbnail is cut.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from embdistill.data.errors import DatasetError
from embdistill.deploy.choices import DeployError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderError", "class_name", "display_name", "list_images", "thumbnail"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
UNREADABLE_GREY = (200, 200, 200)


class ImageFolderError(DeployError, DatasetError):
    """A folder that is missing or holds no images.

    Both a :class:`DeployError` (embed, serve) and a :class:`DatasetError` (training's
    semi-supervised folder), so each command's usual error handling reports it.
    """


def list_images(root: str | Path, *, what: str = "images folder") -> list[Path]:
    """Image files under ``root`` at any depth, sorted, as absolute paths (symlinks kept, not resolved).

    Files and folders whose name starts with a dot are skipped (editor and thumbnail
    caches). ``what`` names the folder's role in the error, e.g.
    ``"distill.semi_supervised.folder"``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"{what} {root} is not a directory")
    paths = sorted(
        p.absolute()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise ImageFolderError(f"{what} {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def class_name(path: str | Path) -> str:
    """A gallery image's class: the name of the folder it sits in (``.../059.California_Gull/x.jpg``)."""
    return Path(path).parent.name


def display_name(name: str) -> str:
    """'059.California_Gull' -> 'California Gull': CUB's numbering and underscores are for machines."""
    head, dot, rest = name.partition(".")
    return (rest if dot and head.isdigit() else name).replace("_", " ")


def thumbnail(path: str | Path, size: int) -> Image.Image:
    """A ``size`` x ``size`` RGB centre crop; a missing or broken file becomes a grey square, not a crash."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale, much faster
            return ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError):
        return Image.new("RGB", (size, size), UNREADABLE_GREY)
