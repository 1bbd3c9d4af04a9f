"""The names the deploy commands accept, and their error type, in one light module.

``embdistill`` builds every sub-command's parser on each call, so the parser module
(:mod:`embdistill.deploy.commands`) must not import torch, onnx or faiss just to list the
choices. The libraries (:mod:`embdistill.deploy.export`, :mod:`embdistill.deploy.quantize`,
:mod:`embdistill.search`) import the same tuples from here: one source of truth.
"""
from __future__ import annotations

__all__ = ["EXPORT_FORMATS", "EXPORT_SPACES", "INDEX_KINDS", "QUANTIZE_MODES", "DeployError", "EmbeddingSpaceError",
           "EmbeddingSpaceWarning"]

EXPORT_FORMATS = ("onnx", "torchscript")
INDEX_KINDS = ("flat", "ivf", "hnsw")
QUANTIZE_MODES = ("int8",)  # ONNX only: static post-training quantization, see embdistill.deploy.quantize
# export --space: the student's own embedding, or the teacher's space its absolute teacher term trained it into
EXPORT_SPACES = ("own", "teacher")


class DeployError(ValueError):
    """Bad input to export / embed / index / search / serve: the message names the file and what was expected."""


class EmbeddingSpaceError(DeployError):
    """A query model from another network than the one that embedded the gallery: every score would be meaningless."""


class EmbeddingSpaceWarning(UserWarning):
    """A gallery or model file older than model fingerprints: whether query and gallery share a space is unchecked."""
