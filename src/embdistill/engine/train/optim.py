"""The optimizer and the learning-rate schedule of a run, from ``train.*``."""
from __future__ import annotations

import math

import torch
from torch import nn

from embdistill.config import ExperimentConfig
from embdistill.models.embedder import Embedder


def build_optimizer(cfg: ExperimentConfig, model: Embedder, objective: nn.Module) -> torch.optim.Optimizer:
    """Adam with the backbone at ``backbone_lr_mult`` × the head's learning rate.

    The objective's own parameters (a learned projection, a hint regressor, proxies)
    form a third group at ``objective_lr_mult`` × the head's rate: they start from random,
    and a short schedule at the head's rate leaves a 512 → 1,280 projection nearly where it
    started (benchmarks/results/asymmetric_cub100.md). (The paper's code meant 0.1× on the
    backbone, but passed a single parameter group, so its optimizer ignored it. Here the
    groups are real.)
    """
    backbone, head = model.param_groups()
    t = cfg.train
    groups = [
        {"params": backbone, "lr": t.lr * t.backbone_lr_mult, "name": "backbone"},
        {"params": head, "lr": t.lr, "name": "head"},
    ]
    own = list(objective.parameters())
    if own:
        groups.append({"params": own, "lr": t.lr * t.objective_lr_mult, "name": "objective"})
    return torch.optim.Adam(groups, weight_decay=t.weight_decay)


def build_scheduler(cfg: ExperimentConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Per-step learning-rate factor: linear warm-up, then ``train.schedule`` (cosine, step or constant).

    The schedule name is checked when the config is read (config.py).
    """
    t = cfg.train
    total, warmup = t.epochs * steps_per_epoch, int(t.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        if t.schedule == "step":
            return 0.1 ** sum(step >= e * steps_per_epoch for e in t.step_epochs)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
