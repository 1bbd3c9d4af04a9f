"""Shared fixtures: the real CUB subset next to the repository, and small run settings.

Nothing the suite checks may depend on the machine (docs/testing.md, "What the suite does not
assume about the machine"): before torch is imported this pins every CPU thread pool to
``THREADS`` (also for the child processes the tests start, which inherit the environment) and
hides any CUDA device, so ``device: auto`` means the CPU everywhere. ``EMBDISTILL_TEST_CUDA=1``
leaves CUDA visible for the tests that need it (they skip without it).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

THREADS = 2
for _pool in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_pool] = str(THREADS)  # not setdefault: in-process and child runs must use the same count
if os.environ.get("EMBDISTILL_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

CUB100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub100"
REPO = Path(__file__).resolve().parents[1]
# Subprocess deadlines are generous (several times a run here); a slower machine can multiply them all.
TIMEOUT_SCALE = float(os.environ.get("EMBDISTILL_TEST_TIMEOUT_SCALE", "1"))


@pytest.fixture(autouse=True)
def _same_threads() -> Iterator[None]:
    """Every test starts with ``THREADS`` torch threads, even after an in-process run set ``threads``."""
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(THREADS)


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
        "device": "cpu",  # not auto: the same kernels and fp32 whether or not the machine has a GPU
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def cub_subset(tmp_path: Path, cub100: Path, per_split: int, per_class: int | None = None) -> Path:
    """A CUB-layout dataset of the first ``per_split`` train and test classes of the CUB subset, each with at most
    ``per_class`` images (all by default); the image folders are symlinks (the benchmarks' smoke data)."""
    from benchmarks.common import cub_subset as subset

    return subset(cub100, tmp_path, per_split, per_class)
