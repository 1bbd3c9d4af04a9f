"""Embed a folder of images, index the embeddings with faiss, and search the index with an image.

Embeddings are L2-normalised, so every index here is on inner product: the score is
the cosine similarity. Files written next to each other::

    embeddings.npy          N x D float32
    embeddings.files.txt    N image paths, one per line, same order
    embeddings.npy.json     the model they came from and its preprocessing
    index.faiss             the faiss index
    index.faiss.json        kind, dim, count, files list, model, recall of an approximate index
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from embdistill.data.datasets import IMAGE_EXTENSIONS, DatasetError, ImageDataset, ImageList
from embdistill.engine.checkpoint import embedder_from_checkpoint, load_checkpoint
from embdistill.export import (
    DeployError,
    ExportMetadata,
    eval_transform,
    is_torchscript_file,
    metadata_from_checkpoint,
    read_onnx_metadata,
    read_torchscript_metadata,
    sidecar_path,
)

__all__ = [
    "INDEX_KINDS",
    "Encoder",
    "Hit",
    "IndexReport",
    "RecallReport",
    "SearchResult",
    "build_index",
    "embed_files",
    "embed_folder",
    "files_list_path",
    "find_images",
    "index_embeddings",
    "load_embeddings",
    "load_encoder",
    "load_index",
    "recall_against_exact",
    "save_grid",
    "search_image",
    "write_embeddings",
]

INDEX_KINDS = ("flat", "ivf", "hnsw")
_NORM_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- models


@dataclass
class Encoder:
    """Any embedder (checkpoint, ONNX, TorchScript) as: preprocessed batch -> N x D numpy embeddings."""

    source: Path
    format: str  # "checkpoint" | "onnx" | "torchscript"
    metadata: ExportMetadata
    run: Callable[[torch.Tensor], np.ndarray]

    @property
    def dim(self) -> int:
        return self.metadata.embedding_dim

    @property
    def transform(self) -> Callable:
        return eval_transform(self.metadata)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.run(batch)


def load_encoder(path: str | Path, threads: int | None = None) -> Encoder:
    """A ``.pt`` checkpoint or run directory (its last.pt), an exported ``.onnx``, or an exported TorchScript file."""
    path = Path(path)
    if not path.exists():
        raise DeployError(f"model {path} does not exist; expected a checkpoint (.pt), a run directory or an exported .onnx")
    if path.suffix.lower() == ".onnx":
        return _onnx_encoder(path, threads)
    if is_torchscript_file(path):
        return _torchscript_encoder(path)
    payload = load_checkpoint(path)
    model = embedder_from_checkpoint(payload).eval()
    meta = metadata_from_checkpoint(payload, model, source=str(path.resolve()))

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return model(batch).embedding.numpy()

    return Encoder(path.resolve(), "checkpoint", meta, run)


def _onnx_encoder(path: Path, threads: int | None) -> Encoder:
    import onnxruntime as ort

    meta = read_onnx_metadata(path)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    if meta.input_name not in inputs:
        raise DeployError(f"{path}: metadata names input {meta.input_name!r}, the graph has {inputs}")

    def run(batch: torch.Tensor) -> np.ndarray:
        return session.run([meta.output_name], {meta.input_name: batch.numpy().astype(np.float32, copy=False)})[0]

    return Encoder(path.resolve(), "onnx", meta, run)


def _torchscript_encoder(path: Path) -> Encoder:
    meta = read_torchscript_metadata(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the file is still valid
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return module(batch).numpy()

    return Encoder(path.resolve(), "torchscript", meta, run)


# --------------------------------------------------------------------------- embed


def find_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` at any depth, sorted; hidden files and folders are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DeployError(f"images folder {root} is not a directory")
    paths = sorted(
        p.absolute()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise DeployError(f"images folder {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


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
    files = find_images(images_dir)
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


# --------------------------------------------------------------------------- index


def _default_nlist(count: int) -> int:
    """About 4·sqrt(N) lists, with >= 39 training points per list so k-means does not complain."""
    return max(1, min(round(4 * math.sqrt(count)), count // 39))


def build_index(
    embeddings: np.ndarray,
    kind: str = "flat",
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    m: int = 32,
    ef_search: int | None = None,
) -> tuple[Any, dict[str, int]]:
    """A faiss inner-product index holding ``embeddings`` (ids = row numbers), and its parameters."""
    import faiss

    if kind not in INDEX_KINDS:
        raise DeployError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    count, dim = embeddings.shape
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    params: dict[str, int] = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = _default_nlist(count) if nlist is None else nlist
        if not 1 <= nlist <= count:
            raise DeployError(f"--nlist must be in 1..{count} (the number of embeddings), got {nlist}")
        nprobe = min(nlist, 8 if nprobe is None else nprobe)
        if nprobe < 1:
            raise DeployError(f"--nprobe must be >= 1, got {nprobe}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = nprobe
        params = {"nlist": nlist, "nprobe": nprobe}
    else:
        if m < 2:
            raise DeployError(f"--m (HNSW neighbours per node) must be >= 2, got {m}")
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64 if ef_search is None else ef_search
        params = {"m": m, "ef_search": int(index.hnsw.efSearch), "ef_construction": int(index.hnsw.efConstruction)}
    index.add(x)
    return index, params


def _apply_params(index: Any, kind: str, params: dict[str, int]) -> None:
    import faiss

    if kind == "ivf" and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if kind == "hnsw" and "ef_search" in params:
        index.hnsw.efSearch = int(params["ef_search"])


def _without_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Drop each query's own id (and faiss's -1 padding) and keep k per row, padded with -1."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row, (found, me) in enumerate(zip(ids, own)):
        kept = found[(found != me) & (found >= 0)][:k]
        out[row, : len(kept)] = kept
    return out


@dataclass(frozen=True)
class RecallReport:
    """Share of the exact k nearest neighbours the approximate index also returns."""

    k: int
    queries: int
    recall: float

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "queries": self.queries, f"recall@{self.k}": self.recall}


def recall_against_exact(
    index: Any, embeddings: np.ndarray, k: int = 10, queries: int = 1000, seed: int = 0
) -> RecallReport:
    """Recall@k of ``index`` against exact search, on a seeded sample of the gallery as queries (self excluded)."""
    import faiss

    count = embeddings.shape[0]
    if count < 2:
        raise DeployError(f"recall needs at least 2 embeddings, got {count}")
    k = max(1, min(k, count - 1))
    chosen = np.sort(np.random.default_rng(seed).choice(count, min(queries, count), replace=False))
    q = np.ascontiguousarray(embeddings[chosen])
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(np.ascontiguousarray(embeddings))
    truth = _without_self(exact.search(q, k + 1)[1], chosen, k)
    found = _without_self(index.search(q, k + 1)[1], chosen, k)
    hits = [len(set(t[t >= 0]) & set(f[f >= 0])) for t, f in zip(truth, found)]
    return RecallReport(k, len(chosen), float(np.sum(hits) / (k * len(chosen))))


@dataclass
class IndexReport:
    path: Path
    sidecar: dict[str, Any]
    recall: RecallReport | None


def index_embeddings(
    embeddings_path: str | Path,
    out: str | Path,
    kind: str = "flat",
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    m: int = 32,
    ef_search: int | None = None,
    recall_k: int = 10,
    recall_queries: int = 1000,
    seed: int = 0,
) -> IndexReport:
    """Build, (for ivf/hnsw) measure recall against exact, and save the index with its sidecar."""
    import faiss

    embeddings_path = Path(embeddings_path)
    embeddings = load_embeddings(embeddings_path)
    files = files_list_path(embeddings_path)
    if files.is_file():
        read_files_list(files, len(embeddings), str(embeddings_path))
    source = sidecar_path(embeddings_path)
    source_info = json.loads(source.read_text()) if source.is_file() else {}
    index, params = build_index(embeddings, kind, nlist=nlist, nprobe=nprobe, m=m, ef_search=ef_search)
    recall = None
    if kind != "flat" and len(embeddings) > 1:
        recall = recall_against_exact(index, embeddings, recall_k, recall_queries, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out))
    sidecar = {
        "kind": kind,
        "metric": "inner_product",
        "dim": int(embeddings.shape[1]),
        "count": int(embeddings.shape[0]),
        "params": params,
        "recall": recall.to_dict() if recall else None,
        "embeddings": str(embeddings_path.resolve()),
        "files": str(files.resolve()) if files.is_file() else None,
        "model": source_info.get("model"),
        "model_format": source_info.get("model_format"),
        "faiss_version": faiss.__version__,
    }
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2) + "\n")
    return IndexReport(out, sidecar, recall)


def load_index(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The faiss index and its sidecar, checked against each other."""
    import faiss

    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise DeployError(f"index {path} does not exist")
    if not side.is_file():
        raise DeployError(f"index {path} has no sidecar {side}; build the index with `embdistill index`")
    try:
        sidecar = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise DeployError(f"{side}: not valid JSON ({err})") from err
    missing = [k for k in ("kind", "dim", "count") if k not in sidecar]
    if missing:
        raise DeployError(f"{side}: lacks {missing}; expected a sidecar written by `embdistill index`")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise DeployError(f"{path}: cannot be read as a faiss index ({err})") from err
    if index.d != sidecar["dim"] or index.ntotal != sidecar["count"]:
        raise DeployError(
            f"index {path} holds {index.ntotal} vectors of dim {index.d} but its sidecar {side} says "
            f"{sidecar['count']} of dim {sidecar['dim']}; rebuild the index with `embdistill index`"
        )
    _apply_params(index, sidecar["kind"], sidecar.get("params") or {})
    return index, sidecar


# --------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    id: int
    path: str


@dataclass
class SearchResult:
    query: Path
    hits: list[Hit]
    model: Path

    def lines(self) -> list[str]:
        return [f"{h.rank:>4}  {h.score:.4f}  {h.path}" for h in self.hits]


def search_image(
    index_path: str | Path, query: str | Path, k: int = 8, model: str | Path | None = None
) -> SearchResult:
    """The query image's k nearest gallery images, embedded with the index's model (or ``model``)."""
    index, sidecar = load_index(index_path)
    if k < 1:
        raise DeployError(f"k must be >= 1, got {k}")
    model = model or sidecar.get("model")
    if not model:
        raise DeployError(f"index {index_path}: its sidecar records no model; pass --model CHECKPOINT_OR_ONNX")
    encoder = load_encoder(model)
    if encoder.dim != index.d:
        raise DeployError(f"model {encoder.source} gives {encoder.dim}-d embeddings, index {index_path} holds {index.d}-d ones")
    query = Path(query)
    if not query.is_file():
        raise DeployError(f"query image {query} does not exist")
    try:
        vector = embed_files(encoder, [query], batch_size=1, progress=False)
    except DatasetError as err:
        raise DeployError(f"query image {query}: {err}") from err
    files = (
        read_files_list(sidecar["files"], index.ntotal, f"index {index_path}")
        if sidecar.get("files") else [f"#{i}" for i in range(index.ntotal)]
    )
    scores, ids = index.search(vector, min(k, index.ntotal))
    hits = [
        Hit(rank, float(s), int(i), files[i])
        for rank, (s, i) in enumerate(((s, i) for s, i in zip(scores[0], ids[0]) if i >= 0), start=1)
    ]
    return SearchResult(query, hits, encoder.source)


def _thumbnail(path: str | Path, size: int) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            return np.asarray(img)
    except (OSError, ValueError):
        return None


def save_grid(result: SearchResult, out: str | Path, columns: int = 5, thumb: int = 192) -> Path:
    """A PNG with the query first and the results after it, the score under each thumbnail."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg via savefig

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    panels = [(result.query, "query")] + [(Path(h.path), f"#{h.rank}  {h.score:.3f}") for h in result.hits]
    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(2.4 * cols, 2.9 * rows))
    for n, (path, label) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, n + 1)
        image = _thumbnail(path, thumb)
        if image is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(label, fontsize=9, fontweight="bold" if n == 0 else "normal")
        ax.set_title(path.name if len(path.name) <= 30 else f"{path.name[:27]}...", fontsize=7)
        if n == 0:
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:red")
                spine.set_linewidth(2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out
