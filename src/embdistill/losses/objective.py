"""The training objective: metric loss + Σ_k λ_k · distillation loss_k, every term reported.

Built from a config by ``engine/train/objective.py`` (``build_objective``): the losses take
plain arguments and know nothing of the config, which sits above them.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from embdistill.losses.distill import DistillationLoss, embedding_of
from embdistill.models.output import EmbedderOutput


class Objective(nn.Module):
    """Combines one metric loss (weight ``metric_weight``) with weighted distillation terms.

    The metric loss sees only labelled images (label >= 0); distillation terms see
    the whole batch, unlabelled images included, which is what makes
    semi-supervised distillation work.

    ``gather`` (data parallelism: concatenate a tensor across processes, see
    engine/compute/distributed.py) gives the metric loss and the batch-level terms the
    global batch's embeddings and labels; per-image terms, which need no other
    images, stay on the local batch and its feature maps.

    ``until_epoch`` (term name -> N) trains a term in epochs 0..N-1 only; the loop's
    ``set_epoch`` says which epoch runs. An ended term is still computed and reported.
    """

    def __init__(self, metric: nn.Module, terms: dict[str, tuple[float, DistillationLoss]] | None = None,
                 gather: Callable[[Tensor], Tensor] | None = None, metric_weight: float = 1.0,
                 until_epoch: dict[str, int] | None = None) -> None:
        super().__init__()
        self.metric = metric
        self.metric_weight = metric_weight
        self.gather = gather
        terms = terms or {}
        self.weights = {name: weight for name, (weight, _) in terms.items()}
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in terms.items()})
        unknown = sorted(set(until_epoch or {}) - set(self.terms))
        if unknown:
            raise ValueError(f"until_epoch names no term: {unknown} (terms: {sorted(self.terms)})")
        self.until_epoch = dict(until_epoch or {})  # name -> the epochs it trains; off from then on
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch about to train: terms past their ``until_epoch`` leave the total (and the gradients)."""
        self.epoch = epoch

    def active(self, name: str) -> bool:
        until = self.until_epoch.get(name)
        return until is None or self.epoch < until

    @property
    def student_layers(self) -> tuple[str, ...]:
        return tuple(sorted({layer for t in self.terms.values() for layer in t.student_layers}))

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        return tuple(sorted({layer for t in self.terms.values() for layer in t.teacher_layers}))

    def forward(self, student: Tensor | EmbedderOutput, labels: Tensor,
                teacher: Tensor | EmbedderOutput | None = None) -> dict[str, Tensor]:
        """Returns ``{"loss": total, "metric": ..., <term>: unweighted value, ...}``.

        ``student`` and ``teacher`` are (B, D) embedding tensors or ``EmbedderOutput``;
        terms that read feature maps (hint, attention) need the latter.
        """
        local_student, local_teacher = student, teacher
        if self.gather is not None:
            student, labels = self.gather(embedding_of(student, "student")), self.gather(labels)
            teacher = self.gather(embedding_of(teacher, "teacher")) if teacher is not None else None
        embedding = embedding_of(student, "student")
        labelled = labels >= 0
        if bool(labelled.all()):
            metric = self.metric(embedding, labels)
        elif bool(labelled.any()):
            metric = self.metric(embedding[labelled], labels[labelled])
        else:
            metric = embedding.sum() * 0.0
        parts = {"metric": metric}
        total = self.metric_weight * metric
        if self.terms and teacher is None:
            raise ValueError("distillation terms are configured but no teacher output was given")
        for name, term in self.terms.items():
            on = self.active(name)
            with torch.set_grad_enabled(on and torch.is_grad_enabled()):  # an ended term is still logged, not trained
                value = term(student, teacher) if term.batch_level else term(local_student, local_teacher)
            parts[name] = value
            if on:
                total = total + self.weights[name] * value
        return {"loss": total, **parts}


def all_finite(parts: dict[str, Tensor] | dict[str, float]) -> bool:
    return all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in parts.values())
