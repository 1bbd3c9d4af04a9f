"""Embed a folder of images, index the embeddings with faiss, and search the index with an image.

Embeddings are L2-normalised, so every index here is on inner product: the score is
the cosine similarity. Files written next to each other::

    embeddings.npy          N x D float32
    embeddings.files.txt    N image paths, one per line, same order
    embeddings.npy.json     the model they came from and its preprocessing
    index.faiss             the faiss index
    index.faiss.json        kind, dim, count, files list, model, recall of an approximate index

Both sidecars record ``model_fingerprint``, the embedding space of the model that made the
gallery (:func:`~embdistill.checkpoints.checkpoint_fingerprint`); searching it with a
model of another space is refused (see :meth:`Gallery.encoder`).

Modules: :mod:`.encoder` (any model file -> embeddings), :mod:`.embed` (folder -> .npy),
:mod:`.index` (faiss), :mod:`.query` (a gallery searched with an image; the PNG grid).
Everything public is importable from ``embdistill.search``.
"""
from __future__ import annotations

from embdistill.deploy.choices import INDEX_KINDS
from embdistill.search.embed import (
    EmbedResult,
    embed_files,
    embed_folder,
    files_list_path,
    find_images,
    load_embeddings,
    read_files_list,
    write_embeddings,
)
from embdistill.search.encoder import Encoder, load_encoder
from embdistill.search.index import IndexReport, RecallReport, build_index, index_embeddings, load_index, recall_against_exact
from embdistill.search.query import Gallery, Hit, SearchResult, load_gallery, save_grid, search_image

__all__ = [
    "INDEX_KINDS",
    "EmbedResult",
    "Encoder",
    "Gallery",
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
    "load_gallery",
    "load_index",
    "read_files_list",
    "recall_against_exact",
    "save_grid",
    "search_image",
    "write_embeddings",
]
