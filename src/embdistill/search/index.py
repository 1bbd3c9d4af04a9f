"""faiss indexes over L2-normalised embeddings: inner product = cosine similarity.

``index.faiss`` sits with ``index.faiss.json``: kind, dim, count, files list, the model
the embeddings came from and its fingerprint (the gallery's embedding space), and (for an
approximate index) its recall against exact search.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embdistill.deploy.export import sidecar_path
from embdistill.deploy.choices import INDEX_KINDS, DeployError
from embdistill.search.embed import files_list_path, load_embeddings, read_files_list

__all__ = [
    "INDEX_KINDS",
    "IndexReport",
    "RecallReport",
    "build_index",
    "index_embeddings",
    "load_index",
    "recall_against_exact",
]


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
        "model_fingerprint": source_info.get("model_fingerprint"),
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
