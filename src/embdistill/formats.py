"""The names the deploy commands accept, and their error type, in one light module.

``embdistill`` builds every sub-command's parser on each call, so the parser module
(:mod:`embdistill.deploy`) must not import torch, onnx or faiss just to list the
choices. The libraries (:mod:`embdistill.export`, :mod:`embdistill.quantize`,
:mod:`embdistill.search`) import the same tuples from here: one source of truth.
"""
from __future__ import annotations

__all__ = ["EXPORT_FORMATS", "INDEX_KINDS", "QUANTIZE_MODES", "DeployError"]

EXPORT_FORMATS = ("onnx", "torchscript")
INDEX_KINDS = ("flat", "ivf", "hnsw")
QUANTIZE_MODES = ("int8",)  # ONNX only: static post-training quantization, see embdistill.quantize


class DeployError(ValueError):
    """Bad input to export / embed / index / search / serve: the message names the file and what was expected."""
