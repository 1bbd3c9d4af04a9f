"""A run's evaluation split, embedded once: ``RUN_DIR/test_embeddings.npz``, valid for one checkpoint.

The trainer writes it from its final evaluation, so the report (Recall@K, NMI,
retrieval grids) never embeds the test images a second time. The file records a
key of the checkpoint it came from (the run's ``best.pt`` when it chose an epoch,
else ``last.pt``: checkpoints.run_checkpoint); once that is rewritten it is ignored.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from embdistill.atomic import write_atomic
from embdistill.checkpoints import run_checkpoint

EMBEDDINGS_FILE = "test_embeddings.npz"


@dataclass
class Embedded:
    embeddings: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, 0..C-1 within the split
    paths: list[str]  # absolute
    class_names: tuple[str, ...]


def checkpoint_key(run_dir: str | Path) -> str:
    """Changes whenever the run's checkpoint is rewritten, which invalidates every cache derived from it."""
    st = run_checkpoint(run_dir).stat()
    return f"{st.st_mtime_ns}-{st.st_size}"


def save_test_embeddings(
    run_dir: str | Path,
    embeddings: torch.Tensor | np.ndarray,
    labels: np.ndarray | Sequence[int],
    paths: Sequence[str | Path],
    class_names: Sequence[str] = (),
) -> Path:
    """Write the cache for the run's current checkpoint (atomically)."""
    run_dir = Path(run_dir)
    emb = embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
    out = run_dir / EMBEDDINGS_FILE
    buffer = io.BytesIO()
    np.savez(
        buffer,
        embeddings=emb.astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        paths=np.array([str(Path(p).resolve()) for p in paths], dtype=str),
        class_names=np.array(list(class_names), dtype=str),
        checkpoint=np.array(checkpoint_key(run_dir)),
    )
    return write_atomic(out, buffer.getvalue())


def load_test_embeddings(run_dir: str | Path) -> Embedded | None:
    """The cached embeddings if they belong to the run's current checkpoint, else None."""
    path = Path(run_dir) / EMBEDDINGS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["checkpoint"]) != checkpoint_key(run_dir):
                return None
            return Embedded(z["embeddings"], z["labels"], [str(p) for p in z["paths"]], tuple(str(n) for n in z["class_names"]))
    except (OSError, KeyError, ValueError):  # torn or foreign file: recompute
        return None
