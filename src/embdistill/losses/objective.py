"""The training objective: metric loss + Σ_k λ_k · distillation loss_k, every term reported."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from embdistill.config import ConfigError
from embdistill.losses.distill import DistillationLoss, build_distill_loss, embedding_of
from embdistill.losses.metric import build_metric_loss
from embdistill.models.output import EmbedderOutput

if TYPE_CHECKING:
    from embdistill.config import ExperimentConfig
    from embdistill.models.embedder import Embedder


class Objective(nn.Module):
    """Combines one metric loss (weight ``metric_weight``) with weighted distillation terms.

    The metric loss sees only labelled images (label >= 0); distillation terms see
    the whole batch, unlabelled images included, which is what makes
    semi-supervised distillation work.

    ``gather`` (data parallelism: concatenate a tensor across processes, see
    engine/distributed.py) gives the metric loss and the batch-level terms the
    global batch's embeddings and labels; per-image terms, which need no other
    images, stay on the local batch and its feature maps.
    """

    def __init__(self, metric: nn.Module, terms: dict[str, tuple[float, DistillationLoss]] | None = None,
                 gather: Callable[[Tensor], Tensor] | None = None, metric_weight: float = 1.0) -> None:
        super().__init__()
        self.metric = metric
        self.metric_weight = metric_weight
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
            value = term(student, teacher) if term.batch_level else term(local_student, local_teacher)
            parts[name] = value
            total = total + self.weights[name] * value
        return {"loss": total, **parts}


def build_objective(cfg: ExperimentConfig, student: Embedder, teacher: Embedder | None,
                    gather: Callable[[Tensor], Tensor] | None = None) -> Objective:
    """``train.metric_loss`` plus each of ``distill.terms``, every term sized to the two networks.

    A name used twice gets a numbered key (``relative``, ``relative_1``) so both are logged.
    ``gather`` (data parallelism) lets the batch-level losses see every process's batch.
    """
    try:
        metric = build_metric_loss(cfg.train.metric_loss, **cfg.train.metric_loss_args)
    except ValueError as err:  # a value the loss refuses, e.g. a margin out of range
        raise ConfigError(f"train.metric_loss ({cfg.train.metric_loss}): {err}") from err
    terms: dict[str, tuple[float, DistillationLoss]] = {}
    for i, term in enumerate(cfg.distill.terms if cfg.distill else []):
        if teacher is None:
            raise ValueError("distill.terms need a teacher network")
        key = term.name if term.name not in terms else f"{term.name}_{len(terms)}"
        try:  # names and argument types were checked with the config; what depends on the networks is checked here
            terms[key] = (term.weight, build_distill_loss(term.name, student, teacher, **term.args))
        except ValueError as err:
            raise ConfigError(f"distill.terms[{i}] ({term.name}): {err}") from err
    return Objective(metric, terms, gather, cfg.train.metric_weight)


def all_finite(parts: dict[str, Tensor] | dict[str, float]) -> bool:
    return all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in parts.values())
