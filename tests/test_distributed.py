"""Data-parallel training on the CPU with gloo and 2 processes.

Two ranks × batch B must give the loss and the gradients of one process on the
global batch of 2B, and a short ``torchrun`` run must leave one run directory,
written by rank 0, whose checkpoint loads and evaluates.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import REPO, TIMEOUT_SCALE, cub_subset, tiny_overrides
from embdistill.config import ConfigError, load_config
from embdistill.data.samplers import PKSampler
from embdistill.engine.batches.unlabelled_stream import BatchStream
from embdistill.checkpoints import CheckpointError, load_checkpoint
from embdistill.engine.compute.distributed import World
from embdistill.engine.scoring.command import evaluate_checkpoint
from embdistill.engine.train.precision import autocast_dtype, memory_format
from embdistill.engine.persist.rundir import resume_config
from embdistill.engine.persist.runlog import read_log
from embdistill.engine.train import run
from embdistill.losses.distill import build_distill_loss
from embdistill.losses.metric import build_metric_loss
from embdistill.losses.objective import Objective
from embdistill.models.output import EmbedderOutput

STUDENT = REPO / "configs" / "cub100" / "student.yaml"  # pretrained MobileNetV2, frozen BatchNorm
B, DIM, TEACHER_DIM = 8, 16, 12  # per-rank batch: 2 classes x 4 images


# --------------------------------------------------------------------------- batches


def test_ranks_together_draw_the_single_process_global_batch() -> None:
    labels = np.repeat(np.arange(12), [7, 12, 4, 9, 15, 6, 8, 10, 5, 11, 9, 6])
    ranks = [list(PKSampler(labels, 2, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    single = list(PKSampler(labels, 4, 4, seed=3))
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for b0, b1, whole in zip(*ranks, single):
        assert b0 + b1 == whole  # the global step is the one-process batch of P·N classes
        assert len(set(whole)) == len(whole)  # no image twice in a global step


def test_unlabelled_batches_are_split_between_ranks() -> None:
    class Views(torch.utils.data.Dataset):
        view = 0

        def __len__(self) -> int:
            return 20

        def __getitem__(self, i: int) -> int:
            return i

    streams = [BatchStream(Views(), 4, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(2):  # a pass holds 2 steps of 2 x 4 images
        first, second = (next(s).tolist() for s in streams)
        assert not set(first) & set(second)
    assert streams[0].epoch == 0 and next(streams[0]) is not None and streams[0].epoch == 1


# --------------------------------------------------------------------------- one step, 2 ranks vs 1 process


class TinyEmbedder(nn.Module):
    """conv -> average pool -> linear -> L2, with its conv map as ``stage1`` (for the hint term)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(8, DIM)

    def forward(self, x: torch.Tensor, layers: tuple[str, ...] = ()) -> EmbedderOutput:
        f = torch.relu(self.conv(x))
        return EmbedderOutput(F.normalize(self.head(f.mean((2, 3))), dim=1), {"stage1": f} if layers else {})


def _step_setup(gather=None) -> tuple[nn.Module, Objective]:
    torch.manual_seed(0)
    model = TinyEmbedder()
    terms = {
        "relative": (1.0, build_distill_loss("relative")),
        "rkd_distance": (0.5, build_distill_loss("rkd_distance")),
        "absolute": (0.7, build_distill_loss("absolute", student_dim=DIM, teacher_dim=TEACHER_DIM)),  # a learned projection
        "hint": (0.3, build_distill_loss("hint", student_channels=8, teacher_channels=6, student_layer="stage1",
                                         teacher_layer="stage1")),  # a learned 1x1 regressor
    }
    return model, Objective(build_metric_loss("batch_hard_triplet", margin=0.2), terms, gather)


def _global_batch() -> tuple[torch.Tensor, torch.Tensor, EmbedderOutput]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2 * B, 3, 32, 32, generator=g)
    labels = torch.arange(4).repeat_interleave(4)  # rank 0: classes 0, 1; rank 1: classes 2, 3
    teacher = EmbedderOutput(F.normalize(torch.randn(2 * B, TEACHER_DIM, generator=g), dim=1),
                             {"stage1": torch.randn(2 * B, 6, 7, 7, generator=g)})
    return images, labels, teacher


def _grads(*modules: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": p.grad.clone() for i, m in enumerate(modules) for name, p in m.named_parameters()}


def _one_step_matches(rank: int, world_size: int) -> None:
    images, labels, teacher = _global_batch()
    model, objective = _step_setup()
    expected = objective(model(images, ("stage1",)), labels, teacher)
    expected["loss"].backward()
    expected_grads = _grads(model, objective)

    world = World(rank, world_size, rank)
    model, objective = _step_setup(world.gather)
    ddp = world.wrap(model, torch.device("cpu"))
    mine = slice(rank * B, (rank + 1) * B)
    local_teacher = EmbedderOutput(teacher.embedding[mine], {"stage1": teacher.features["stage1"][mine]})
    parts = objective(ddp(images[mine], ("stage1",)), labels[mine], local_teacher)
    values = world.average(parts)
    parts["loss"].backward()
    world.average_gradients(objective.parameters())

    assert values.keys() == expected.keys()
    for name, value in values.items():
        assert value == pytest.approx(expected[name].item(), rel=1e-5, abs=1e-7), name
    grads = _grads(model, objective)
    assert grads.keys() == expected_grads.keys() and "1.terms.absolute.projection.weight" in grads
    for name, grad in grads.items():  # equal up to float32 summation order
        scale = expected_grads[name].abs().max().item()
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    # Without gathering each rank's relative term sees only its own 8 images: a different loss.
    _, alone = _step_setup()
    assert alone(model(images[mine], ("stage1",)), labels[mine], local_teacher)["relative"].item() != pytest.approx(
        expected["relative"].item(), rel=1e-3)


def _worker(rank: int, world_size: int, port: int, fn) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_give_the_single_process_loss_and_gradients() -> None:
    """Metric loss, relative and RKD on the gathered batch; absolute (learned projection) and hint per image."""
    mp.spawn(_worker, args=(2, _free_port(), _one_step_matches), nprocs=2, join=True)


# --------------------------------------------------------------------------- torchrun end to end


@pytest.mark.slow
def test_torchrun_trains_with_two_processes_and_rank_0_writes_the_run(tmp_path, cub100):
    """2 processes x P=2 classes: the loss of one process with P=4; one run directory; its checkpoint evaluates."""
    data = cub_subset(tmp_path, cub100, per_split=8)
    settings = {"data.root": data, "data.image_size": 32, "data.validation_classes": 0, "threads": 1,
                "train.images_per_class": 4}
    overrides = tiny_overrides(tmp_path, cub100, "ddp", **settings, **{"train.classes_per_batch": 2})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "embdistill", "train", "-c", str(STUDENT), *overrides, "--no-progress"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300 * TIMEOUT_SCALE,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count('"run_dir"') == 1  # one process prints the result
    printed = json.loads(done.stdout[done.stdout.index("{"):done.stdout.rindex("}") + 1])

    run_dir = tmp_path / "ddp"
    records = read_log(run_dir)
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]  # written once, by rank 0
    assert len([r for r in records if r["kind"] == "eval"]) == 1
    payload = load_checkpoint(run_dir)
    assert payload["resume"]["world_size"] == 2
    assert payload["resume"]["seen"] == 2 * 2 * 8  # 2 steps x 2 ranks x P·K
    summary = yaml.safe_load((run_dir / "summary.yaml").read_text())
    assert summary["processes"] == 2 and summary["recall@1"] == printed["recall@1"]
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix == ".pt") == ["last.pt"]

    # Rank 0 evaluated with 1 thread (threads: 1): so does this re-evaluation, with the same kernels and
    # batches, so its embeddings are the same floats and the metrics agree to 1e-6.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = evaluate_checkpoint(run_dir, split="test", num_workers=0, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert metrics["classes"] == 8
    for key in ("recall@1", "recall@2", "map@r"):
        assert metrics[key] == pytest.approx(summary[key], abs=1e-6), key

    # One process with the global batch (P=4) draws the same images and computes the same loss.
    single = run(load_config(STUDENT, tiny_overrides(tmp_path, cub100, "single", **settings,
                                                     **{"train.classes_per_batch": 4})), progress=False)
    single_steps = [r for r in read_log(single.run_dir) if r["kind"] == "step"]
    assert steps[0]["loss"] == pytest.approx(single_steps[0]["loss"], rel=1e-4)
    assert steps[1]["loss"] == pytest.approx(single_steps[1]["loss"], rel=1e-4)

    # Resuming needs the same number of processes: the P×K batches depend on it.
    with pytest.raises(CheckpointError, match="trained by 2 process"):
        run(resume_config(run_dir), progress=False, resume=True)


# --------------------------------------------------------------------------- precision and layout


def test_precision_and_channels_last_settings() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp32", cuda) is None
    assert memory_format("auto", cpu) == torch.contiguous_format and memory_format("auto", cuda) == torch.channels_last
    assert memory_format(True, cpu) == torch.channels_last and memory_format(False, cuda) == torch.contiguous_format
    # Other values never get this far: the config is checked when it is read.
    with pytest.raises(ConfigError, match="train.precision: expected one of 'auto', 'fp32', 'bf16', got 'fp16'"):
        load_config(None, ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="train.channels_last: expected bool or 'auto', got 'yes_please'"):
        load_config(None, ["train.channels_last=yes_please"])
    # Asked for on the CPU, both work: a bf16 forward pass in NHWC, losses in fp32.
    model = TinyEmbedder().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        out = model(torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last), ("stage1",))
    assert out.embedding.dtype is torch.bfloat16 and out.float().embedding.dtype is torch.float32
