"""Embed a folder of images into ``embeddings.npy`` + ``embeddings.files.txt`` + a sidecar naming the model."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from embdistill.data import ImageDataset, ImageList
from embdistill.deploy.export import sidecar_path
from embdistill.deploy.choices import DeployError
from embdistill.data.imagefiles import list_images
from embdistill.search.encoder import Encoder, load_encoder

__all__ = [
    "EmbedResult",
    "embed_files",
    "embed_folder",
    "files_list_path",
    "find_images",
    "load_embeddings",
    "read_files_list",
    "write_embeddings",
]

_NORM_TOLERANCE = 1e-3
find_images = list_images  # the name `embed` has always used; one lister for the whole package


def _unlabelled(paths: Sequence[Path]) -> ImageList:
    return ImageList(paths=tuple(paths), labels=np.zeros(len(paths), dtype=np.int64), class_names=("unlabelled",), name="images")


def embed_files(
    encoder: Encoder,
    paths: Sequence[Path],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """N x D float32 embeddings of ``paths`` (in order), preprocessed as the encoder's metadata says."""
    if batch_size < 1:
        raise DeployError(f"batch size must be >= 1, got {batch_size}")
    dataset = ImageDataset(_unlabelled(paths), encoder.transform)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    chunks = [encoder(images) for images, _, _ in tqdm(loader, desc="embed", unit="batch", disable=not progress)]
    embeddings = np.concatenate(chunks).astype(np.float32, copy=False)
    if embeddings.shape != (len(paths), encoder.dim):
        raise DeployError(
            f"{encoder.source}: produced embeddings of shape {embeddings.shape}, "
            f"expected ({len(paths)}, {encoder.dim}) from its metadata"
        )
    return embeddings


@dataclass
class EmbedResult:
    embeddings: np.ndarray
    files: list[Path]
    encoder: Encoder


def embed_folder(
    model: str | Path,
    images_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    threads: int | None = None,
) -> EmbedResult:
    files = list_images(images_dir)
    encoder = load_encoder(model, threads)
    return EmbedResult(embed_files(encoder, files, batch_size, num_workers, progress), files, encoder)


def files_list_path(embeddings_path: str | Path) -> Path:
    """``embeddings.npy`` -> ``embeddings.files.txt``."""
    path = Path(embeddings_path)
    return path.with_name(f"{path.stem}.files.txt")


def write_embeddings(out: str | Path, result: EmbedResult) -> Path:
    """The .npy, its files list, and a sidecar naming the model (which ``index`` and ``search`` reuse)."""
    out = Path(out)
    if out.suffix != ".npy":
        raise DeployError(f"embeddings output {out} must end in .npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, result.embeddings)
    files = files_list_path(out)
    files.write_text("".join(f"{p}\n" for p in result.files))
    sidecar_path(out).write_text(json.dumps({
        "count": int(result.embeddings.shape[0]),
        "dim": int(result.embeddings.shape[1]),
        "files": str(files.resolve()),
        "model": str(result.encoder.source),
        "model_format": result.encoder.format,
        "model_fingerprint": result.encoder.fingerprint,  # the gallery's embedding space, checked by search and serve
        "preprocessing": result.encoder.metadata.to_dict(),
    }, indent=2) + "\n")
    return out


def load_embeddings(path: str | Path) -> np.ndarray:
    """A 2-D float array of L2-normalised rows, as float32 (what inner-product = cosine needs)."""
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"embeddings file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:
        raise DeployError(f"{path}: cannot be read as a .npy array ({type(err).__name__}: {err})") from err
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise DeployError(f"{path}: expected a 2-D float array (N images x D dims), got shape {array.shape} dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DeployError(f"{path}: expected at least one embedding of at least one dim, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise DeployError(f"{path}: holds NaN or infinite values")
    norms = np.linalg.norm(array, axis=1)
    if np.abs(norms - 1).max() > _NORM_TOLERANCE:
        raise DeployError(
            f"{path}: rows must be L2-normalised (inner product = cosine), norms range "
            f"{norms.min():.4g}..{norms.max():.4g}; `embdistill embed` writes unit vectors"
        )
    return array


def read_files_list(path: str | Path, count: int, where: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{where}: files list {path} does not exist")
    files = path.read_text().splitlines()
    if len(files) != count:
        raise DeployError(f"{where}: files list {path} has {len(files)} lines, expected {count} (one per embedding)")
    return files
