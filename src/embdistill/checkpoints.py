"""Checkpoints: written atomically, and enough inside to rebuild the embedder anywhere.

Read by training (resume, the teacher, the chosen epoch), by ``embdistill evaluate``, the
report, export and search alike, so it sits above the config and below all of them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from embdistill.atomic import write_atomic
from embdistill.config import ModelConfig
from embdistill.data.transforms import Normalization
from embdistill.models.embedder import Embedder, create_embedder


BEST = "best.pt"  # the epoch chosen on held-out classes (train.select: best; engine/train/epoch_selection.py)
EPOCHS = "epochs"  # every epoch's weights, epochs/epoch_001.pt... (train.keep_epochs)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not what the config expects."""


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a run directory stands for: ``best.pt`` when the run chose an epoch, else ``last.pt``.

    ``last.pt`` is always the latest state, what a resumed run continues from; a run
    with ``train.select: best`` is scored, reported and exported as its ``best.pt``.
    """
    best = Path(run_dir) / BEST
    return best if best.is_file() else Path(run_dir) / "last.pt"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file, fsync, then rename (:func:`~embdistill.atomic.write_atomic`): a crash never
    leaves a torn checkpoint."""
    write_atomic(path, lambda f: torch.save(payload, f))


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary files of a run directory's atomic writes (checkpoints, the cached test embeddings)
    that were killed (SIGKILL) before their rename."""
    stale = sorted(p for pattern in (".*.pt.*.tmp", ".*.npz.*.tmp") for p in Path(directory).glob(pattern))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = run_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not an embdistill checkpoint dict")
    for key in ("model_config", "model_state", "image_size"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} has no {key!r}: not written by embdistill")
    return payload


def embedder_from_checkpoint(payload: dict[str, Any]) -> Embedder:
    """Rebuild the embedder (architecture from its config, no pretrained download) and load its weights."""
    for key in ("model_config", "model_state"):
        if key not in payload:
            raise CheckpointError(f"checkpoint payload has no {key!r}: not written by embdistill")
    try:
        config = ModelConfig(**{**payload["model_config"], "pretrained": False})
    except TypeError as err:  # a model_config field this version does not know
        raise CheckpointError(f"checkpoint model_config {payload['model_config']} does not fit ModelConfig: {err}") from err
    model = create_embedder(config)
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as err:  # missing/unexpected keys or wrong shapes
        raise CheckpointError(f"checkpoint weights do not fit {config.backbone}: {err}") from err
    return model


def checkpoint_normalization(payload: dict[str, Any]) -> Normalization:
    mean, std = payload["normalization"]
    return Normalization(tuple(mean), tuple(std))


def checkpoint_fingerprint(checkpoint: str | Path | dict[str, Any]) -> str:
    """SHA-256 of what decides a checkpoint's outputs: its model config, input normalisation and weights.

    Not the file's bytes: a checkpoint rewritten with the same weights (another training
    config stored beside them, another pickle) keeps its fingerprint. It names an
    embedding space: a teacher bank is keyed by it, and a gallery, an ONNX or INT8
    export record the fingerprint of the checkpoint they came from. ``checkpoint``: a
    file, a run directory (:func:`run_checkpoint`) or an already loaded payload.
    """
    payload = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    digest = hashlib.sha256()
    digest.update(json.dumps({"model_config": payload["model_config"], "normalization": payload.get("normalization")},
                             sort_keys=True, default=str).encode())
    for name, tensor in sorted(payload["model_state"].items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_teacher(
    payload: dict[str, Any],
    path: str | Path,
    teacher: Embedder,
    *,
    backbone: str | None = None,
    dim: int | None = None,
    image_size: int | None = None,
    strict_image_size: bool = False,
) -> list[str]:
    """Compare a teacher checkpoint (and ``teacher``, the embedder rebuilt from it) with the config.

    ``backbone`` and ``dim`` (None: accept the checkpoint's) must match its
    ``model_config``, and the normalisation it was trained with must be the one the
    rebuilt architecture applies. Every mismatch is named in one
    :class:`CheckpointError`. A different ``image_size`` is returned as a note to
    print, or is a mismatch too with ``strict_image_size``.
    """
    config = payload["model_config"]
    differences, notes = [], []
    if backbone is not None and config.get("backbone") != backbone:
        differences.append(f"architecture: distill.teacher_backbone={backbone}, the checkpoint is a {config.get('backbone')}")
    if dim is not None and config.get("dim") != dim:
        differences.append(f"embedding size: distill.teacher_dim={dim}, the checkpoint embeds in {config.get('dim')}-d")
    if "normalization" in payload and checkpoint_normalization(payload) != teacher.normalization:
        saved, expected = checkpoint_normalization(payload), teacher.normalization
        differences.append(f"normalisation: the checkpoint was trained on inputs normalised with mean {saved.mean}, std {saved.std}; "
                           f"its architecture {config.get('backbone')} normalises with mean {expected.mean}, std {expected.std}")
    if image_size is not None and payload["image_size"] != image_size:
        text = f"image size: the teacher was trained at {payload['image_size']} px, data.image_size is {image_size} px"
        (differences if strict_image_size else notes).append(text + (" (distill.strict_teacher=true)" if strict_image_size else ""))
    if differences:
        raise CheckpointError(f"teacher checkpoint {path} does not match the config: " + "; ".join(differences))
    return notes
