"""The training objective: metric loss + Σ_k λ_k · distillation loss_k, every term reported."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from embdistill.losses.distill import DistillationLoss
from embdistill.models.output import EmbedderOutput


class Objective(nn.Module):
    """Combines one metric loss with weighted distillation terms.

    The metric loss sees only labelled images (label >= 0); distillation terms see
    the whole batch, unlabelled images included, which is what makes
    semi-supervised distillation work.

    ``gather`` (data parallelism: concatenate a tensor across processes, see
    engine/distributed.py) gives the metric loss and the batch-level terms the
    global batch's embeddings and labels; per-image terms, which need no other
    images, stay on the local batch and its feature maps.
    """

    def __init__(self, metric: nn.Module, terms: dict[str, tuple[float, DistillationLoss]] | None = None,
                 gather: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.metric = metric
        self.gather = gather
        terms = terms or {}
        self.weights = {name: weight for name, (weight, _) in terms.items()}
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in terms.items()})

    @property
    def student_layers(self) -> tuple[str, ...]:
        return tuple(sorted({layer for t in self.terms.values() for layer in t.student_layers}))

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        return tuple(sorted({layer for t in self.terms.values() for layer in t.teacher_layers}))

    def forward(self, student: EmbedderOutput, labels: Tensor, teacher: EmbedderOutput | None = None) -> dict[str, Tensor]:
        """Returns ``{"loss": total, "metric": ..., <term>: unweighted value, ...}``."""
        local_student, local_teacher = student, teacher
        if self.gather is not None:
            student, labels = EmbedderOutput(self.gather(student.embedding)), self.gather(labels)
            teacher = EmbedderOutput(self.gather(teacher.embedding)) if teacher is not None else None
        labelled = labels >= 0
        if bool(labelled.all()):
            metric = self.metric(student.embedding, labels)
        elif bool(labelled.any()):
            metric = self.metric(student.embedding[labelled], labels[labelled])
        else:
            metric = student.embedding.sum() * 0.0
        parts = {"metric": metric}
        total = metric
        if self.terms and teacher is None:
            raise ValueError("distillation terms are configured but no teacher output was given")
        for name, term in self.terms.items():
            value = term(student, teacher) if term.batch_level else term(local_student, local_teacher)
            parts[name] = value
            total = total + self.weights[name] * value
        return {"loss": total, **parts}


def all_finite(parts: dict[str, Tensor] | dict[str, float]) -> bool:
    return all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in parts.values())
