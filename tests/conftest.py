"""Shared fixtures: the real CUB subset next to the repository, and small run settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

CUB100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub100"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cub100() -> Path:
    if not (CUB100 / "images.txt").is_file():
        pytest.skip(f"the CUB subset is not at {CUB100}")
    return CUB100


def tiny_overrides(tmp_path: Path, cub100: Path, name: str, **extra: object) -> list[str]:
    """Settings that make a real run on real images take seconds: 64 px, 2 steps, 4 held-out classes."""
    values = {
        "name": name,
        "output_dir": str(tmp_path),
        "data.root": str(cub100),
        "data.image_size": 64,
        "data.cache_images": False,
        "data.num_workers": 0,
        "data.validation_classes": 4,
        "train.epochs": 1,
        "train.batches_per_epoch": 2,
        "train.log_every": 1,
        "eval.batch_size": 64,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]
