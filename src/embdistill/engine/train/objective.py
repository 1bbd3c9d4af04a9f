"""The run's objective from its config: ``train.metric_loss`` plus each of ``distill.terms``.

The losses (``embdistill.losses``) take plain arguments; this builder reads the config
and names the config key in the error when a loss refuses a value.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from embdistill.config import ConfigError, ExperimentConfig
from embdistill.losses.distill import DistillationLoss, build_distill_loss
from embdistill.losses.metric import build_metric_loss
from embdistill.losses.objective import Objective
from embdistill.models.embedder import Embedder

__all__ = ["build_objective"]


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
    until: dict[str, int] = {}
    for i, term in enumerate(cfg.distill.terms if cfg.distill else []):
        if teacher is None:
            raise ValueError("distill.terms need a teacher network")
        key = term.name if term.name not in terms else f"{term.name}_{len(terms)}"
        if term.until_epoch is not None:
            until[key] = term.until_epoch
        try:  # names and argument types were checked with the config; what depends on the networks is checked here
            terms[key] = (term.weight, build_distill_loss(term.name, student, teacher, **term.args))
        except ValueError as err:
            raise ConfigError(f"distill.terms[{i}] ({term.name}): {err}") from err
    return Objective(metric, terms, gather, cfg.train.metric_weight, until)
