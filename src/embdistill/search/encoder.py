"""Any embedder (a checkpoint, an exported ONNX or TorchScript file) behind one call.

`embed`, `search` and the search page load a model by path and need only
"preprocessed batch -> N x D embeddings" plus the preprocessing to apply.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from embdistill.data.transforms import eval_transform
from embdistill.checkpoints import embedder_from_checkpoint, load_checkpoint
from embdistill.teacher_space import TEACHER_SPACE, in_teacher_space
from embdistill.deploy.export import (
    ExportMetadata,
    is_torchscript_file,
    metadata_from_checkpoint,
    read_onnx_metadata,
    read_quantization_record,
    read_torchscript_metadata,
)
from embdistill.deploy.choices import DeployError
from embdistill.deploy.quantize import precise_session_config

__all__ = ["Encoder", "load_encoder"]


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
    def fingerprint(self) -> str | None:
        """The embedding space: the source checkpoint's fingerprint (None: an export older than fingerprints)."""
        return self.metadata.model_fingerprint or None

    @property
    def declared_space(self) -> str | None:
        """The teacher's space this model's output was trained into (absolute teacher term), None if none."""
        return self.metadata.declared_space or None

    @property
    def transform(self) -> Callable:
        return eval_transform(self.metadata)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.run(batch)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """N x D float32 embeddings of decoded RGB images, preprocessed as for `embed` (the page's uploads)."""
        transform = self.transform
        batch = torch.stack([transform(image) for image in images])
        return np.asarray(self(batch), dtype=np.float32)


def load_encoder(path: str | Path, threads: int | None = None, *, target_space: str | None = None) -> Encoder:
    """A ``.pt`` checkpoint or run directory (its last.pt), an exported ``.onnx``, or an exported TorchScript file.

    ``target_space``: a gallery's fingerprint. A checkpoint of a student trained into that space
    through a learned projection (absolute teacher term, teacher_space.py) is loaded with the
    projection applied, so its output lies there; an exported file is what it was exported as.
    """
    path = Path(path)
    if not path.exists():
        raise DeployError(f"model {path} does not exist; expected a checkpoint (.pt), a run directory or an exported .onnx")
    if path.suffix.lower() == ".onnx":
        return _onnx_encoder(path, threads)
    if is_torchscript_file(path):
        return _torchscript_encoder(path)
    payload = load_checkpoint(path)
    if target_space and (payload.get(TEACHER_SPACE) or {}).get("fingerprint") == target_space:
        payload = in_teacher_space(payload, f"checkpoint {path}")
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
    for key, value in precise_session_config(read_quantization_record(path), f"model {path}").items():
        options.add_session_config_entry(key, value)
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
