"""Search a gallery with an image: `embdistill search` and the search page share this path."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embdistill.data import DatasetError
from embdistill.deploy.export import sidecar_path
from embdistill.deploy.choices import DeployError, EmbeddingSpaceError, EmbeddingSpaceWarning
from embdistill.data.imagefiles import class_name, display_name
from embdistill.search.embed import embed_files, files_list_path, load_embeddings, read_files_list
from embdistill.search.encoder import Encoder, load_encoder
from embdistill.search.index import build_index, load_index

__all__ = ["Gallery", "Hit", "SearchResult", "load_gallery", "save_grid", "search_image"]


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # cosine similarity (inner product of unit vectors)
    id: int
    path: str

    @property
    def distance(self) -> float:
        """Euclidean distance between the two unit embeddings: sqrt(2 - 2 cos)."""
        return math.sqrt(max(0.0, 2.0 - 2.0 * self.score))

    @property
    def class_name(self) -> str:
        """The gallery image's class: its parent folder's name."""
        return class_name(self.path)


@dataclass
class Gallery:
    """A searchable gallery: its faiss index, the image path of each vector, the model that embedded them."""

    path: Path
    index: Any
    files: list[str]
    model: str | None
    fingerprint: str | None = None  # the embedding space of that model (None: a gallery older than fingerprints)

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def encoder(
        self, model: str | Path | None = None, threads: int | None = None, *, allow_other_space: bool = False
    ) -> Encoder:
        """The model that embedded the gallery (or ``model``), checked to give vectors of the gallery's space.

        Two networks of one embedding size still embed into unrelated spaces, where every
        score is noise; so a model whose fingerprint differs from the gallery's is refused
        (:class:`EmbeddingSpaceError`) unless ``allow_other_space``. The gallery's own
        checkpoint and its ONNX, TorchScript and INT8 exports share its fingerprint; a
        student that declares the gallery's space (trained into its teacher's space by
        the absolute teacher term, see :meth:`pairing`) is accepted too, and its
        checkpoint is loaded with its projection applied. A gallery or an export older
        than fingerprints is accepted with an :class:`EmbeddingSpaceWarning`: the check
        cannot be made.
        """
        model = model or self.model
        if not model:
            raise DeployError(f"gallery {self.path}: its sidecar records no model; pass --model CHECKPOINT_OR_ONNX")
        encoder = load_encoder(model, threads, target_space=self.fingerprint)
        if encoder.dim != self.dim:
            hint = ("" if encoder.format == "checkpoint" or encoder.declared_space else
                    "; a student distilled with the absolute teacher term through a projection queries its teacher's "
                    "gallery when exported with `embdistill export CKPT --space teacher`")
            raise DeployError(f"model {encoder.source} gives {encoder.dim}-d embeddings, gallery {self.path} holds "
                              f"{self.dim}-d ones{hint}")
        self._check_space(encoder, allow_other_space)
        return encoder

    def pairing(self, encoder: Encoder) -> str | None:
        """One line when ``encoder`` is another network that was trained into this gallery's space (a student
        querying its teacher's gallery), else None."""
        if not self.fingerprint or encoder.fingerprint == self.fingerprint or encoder.declared_space != self.fingerprint:
            return None
        return (f"student {encoder.source} queries gallery {self.path} of its teacher {self.model or '(its model unrecorded)'}: "
                f"trained into the teacher's space {self.fingerprint[:12]} by the absolute teacher term")

    def _check_space(self, encoder: Encoder, allow_other_space: bool) -> None:
        if self.fingerprint is None:
            warnings.warn(f"gallery {self.path} records no model fingerprint (embedded before embdistill recorded one), so "
                          f"whether {encoder.source} embeds into its space is unchecked; re-embed it with `embdistill embed`",
                          EmbeddingSpaceWarning, stacklevel=3)
        elif encoder.fingerprint is None:
            warnings.warn(f"model {encoder.source} records no fingerprint (exported before embdistill recorded one), so "
                          f"whether it embeds into the space of gallery {self.path} is unchecked; re-export it",
                          EmbeddingSpaceWarning, stacklevel=3)
        elif encoder.fingerprint != self.fingerprint and encoder.declared_space != self.fingerprint and not allow_other_space:
            raise EmbeddingSpaceError(
                f"model {encoder.source} embeds into space {encoder.fingerprint[:12]}, but gallery {self.path} was "
                f"embedded by {self.model or 'another model'} into space {self.fingerprint[:12]}: scores across two spaces "
                "mean nothing; use the gallery's model or its export, re-embed the gallery, or pass --allow-other-space"
            )

    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The k nearest gallery images of each row of ``vectors``, best first."""
        if k < 1:
            raise DeployError(f"k must be >= 1, got {k}")
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, self.size))
        return [
            [Hit(rank, float(s), int(i), self.files[i])
             for rank, (s, i) in enumerate(((s, i) for s, i in zip(row_s, row_i) if i >= 0), start=1)]
            for row_s, row_i in zip(scores, ids)
        ]


def load_gallery(path: str | Path) -> Gallery:
    """A ``.faiss`` index from `embdistill index` (with its sidecar), or a ``.npy`` from `embdistill embed`
    (an exact index is then built in memory)."""
    path = Path(path)
    if path.suffix == ".npy":
        embeddings = load_embeddings(path)
        side = sidecar_path(path)
        info = json.loads(side.read_text()) if side.is_file() else {}
        files_path = files_list_path(path)
        files = (read_files_list(files_path, len(embeddings), f"embeddings {path}") if files_path.is_file()
                 else [f"#{i}" for i in range(len(embeddings))])
        return Gallery(path, build_index(embeddings, "flat")[0], files, info.get("model"), info.get("model_fingerprint"))
    index, sidecar = load_index(path)
    files = (
        read_files_list(sidecar["files"], index.ntotal, f"index {path}")
        if sidecar.get("files") else [f"#{i}" for i in range(index.ntotal)]
    )
    return Gallery(path, index, files, sidecar.get("model"), sidecar.get("model_fingerprint"))


@dataclass
class SearchResult:
    query: Path
    hits: list[Hit]
    model: Path
    pairing: str | None = None  # the line saying that a student queries its teacher's gallery (Gallery.pairing)

    def lines(self) -> list[str]:
        return [f"{h.rank:>4}  {h.score:.4f}  {h.path}" for h in self.hits]


def search_image(
    index_path: str | Path, query: str | Path, k: int = 8, model: str | Path | None = None,
    *, allow_other_space: bool = False,
) -> SearchResult:
    """The query image's k nearest gallery images, embedded with the index's model (or ``model``, which must
    embed into the gallery's space unless ``allow_other_space``: see :meth:`Gallery.encoder`)."""
    gallery = load_gallery(index_path)
    if k < 1:
        raise DeployError(f"k must be >= 1, got {k}")
    encoder = gallery.encoder(model, allow_other_space=allow_other_space)
    query = Path(query)
    if not query.is_file():
        raise DeployError(f"query image {query} does not exist")
    try:
        vector = embed_files(encoder, [query], batch_size=1, progress=False)
    except DatasetError as err:  # its message suggests a training option, which means nothing here
        raise DeployError(
            f"query image {query} cannot be decoded (truncated, corrupt or not an image?): {err.__cause__ or err}"
        ) from err
    return SearchResult(query, gallery.search(vector, k)[0], encoder.source, gallery.pairing(encoder))


def save_grid(result: SearchResult, out: str | Path, columns: int = 5, thumb: int = 160) -> Path:
    """A PNG: the query (grey frame) then its hits, ``columns`` per row, with rank, cosine and class under each.

    When the query sits in a folder named like a class of the hits (a gallery image as
    query), hits are framed green / red for the same / another class; otherwise blue.
    """
    from embdistill.report.plots import CORRECT_COLOUR, NEUTRAL_COLOUR, QUERY_COLOUR, WRONG_COLOUR, GridCell, draw_grid

    if columns < 1:
        raise DeployError(f"grid columns must be >= 1, got {columns}")
    query_class = class_name(result.query)
    known = query_class in {h.class_name for h in result.hits}

    def frame(hit: Hit) -> tuple[int, int, int]:
        if not known:
            return NEUTRAL_COLOUR
        return CORRECT_COLOUR if hit.class_name == query_class else WRONG_COLOUR

    cells = [GridCell(result.query, QUERY_COLOUR, ("query", display_name(query_class) if known else result.query.name))]
    cells += [GridCell(h.path, frame(h), (f"#{h.rank}  cos {h.score:.3f}", display_name(h.class_name))) for h in result.hits]
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    return draw_grid(rows, Path(out), thumb)
