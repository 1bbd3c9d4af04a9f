"""Which epoch's weights a run is scored with: the last, or the best on held-out train classes.

The held-out train classes (``data.validation_classes``) are scored every
``eval.every_epochs`` and, when they choose (``train.select: best``) or are not
the run's final split (``eval.split: test``), after the last epoch too. With
``select: best`` each score is a candidate: the best by ``train.select_metric``
(the earlier epoch on a tie) is written to ``RUN_DIR/best.pt``, and
``train.patience`` stops training after that many scores without a better one.
The test classes take no part; the trainer scores them once, at the end, on the
chosen weights. What has been chosen so far travels in ``last.pt``, so a resumed
run keeps it.
"""
from __future__ import annotations

from typing import Any

from embdistill.config import ExperimentConfig
from embdistill.checkpoints import BEST, CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["BEST", "Selection", "weights"]

# Checkpoint entries best.pt keeps: enough to rebuild and score the embedder, nothing to resume with.
_WEIGHTS = ("model_config", "model_state", "normalization", "image_size", "config", "epoch", "step",
            "teacher_space")  # the space an absolute teacher term trained it into, its projection of the same step


def weights(payload: dict[str, Any]) -> dict[str, Any]:
    """The entries of a checkpoint payload that rebuild and score the embedder (best.pt's, train.keep_epochs')."""
    return {k: payload[k] for k in _WEIGHTS if k in payload}


class Selection:
    """The validation scores so far, the best of them and the early-stopping count."""

    def __init__(self, cfg: ExperimentConfig, held_out: bool, scored_at_end: str, writes: bool = True) -> None:
        self.rule, self.metric, self.patience = cfg.train.select, cfg.train.select_metric, cfg.train.patience
        self.every, self.epochs = cfg.eval.every_epochs, cfg.train.epochs
        self.held_out = held_out  # the periodic scores are on held-out train classes (else on the run's split)
        self.separate = held_out and scored_at_end != "validation"  # the end scores other classes
        self.path = cfg.run_dir / BEST
        self.writes = writes  # False on data-parallel ranks other than 0
        self.curve: list[dict[str, Any]] = []  # {"epoch": n, **metrics} for every held-out score
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.since_best = 0  # scores since the best one
        self.stopped = False  # by train.patience: a resumed run goes straight to scoring

    def due(self, epochs_done: int) -> bool:
        """Whether to score the periodic split after this many epochs.

        The last epoch is left to the final score when that is the same split of the
        same weights; otherwise it is scored like any other, as a candidate.
        """
        if not self.every:
            return False
        if epochs_done < self.epochs:
            return epochs_done % self.every == 0
        return self.rule == "best" or self.separate

    def observe(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record a held-out score; True when it is the new best, whose weights belong in best.pt."""
        if not self.held_out:
            return False
        self.curve.append({"epoch": epoch, **metrics})
        if self.rule != "best":
            return False
        value = metrics[self.metric]
        if self.best is None or value > self.best:
            self.best, self.best_epoch, self.since_best = value, epoch, 0
            return True
        self.since_best += 1
        self.stopped = bool(self.patience) and self.since_best >= self.patience
        return False

    def save_best(self, payload: dict[str, Any]) -> None:
        """Write ``best.pt`` from a checkpoint payload of the best epoch (written after its last.pt: see load_state_dict)."""
        if self.writes:
            save_checkpoint(self.path, {**weights(payload),
                                        "selected": {"metric": self.metric, "value": self.best, "epoch": self.best_epoch}})

    @property
    def chose(self) -> bool:
        """Whether the final score is of best.pt's weights rather than the last ones."""
        return self.rule == "best" and self.best_epoch is not None

    def chosen_checkpoint(self) -> dict[str, Any]:
        """best.pt: the chosen epoch's weights and, for a student in its teacher's space, that epoch's projection."""
        return load_checkpoint(self.path)

    def summary(self, epochs_done: int) -> dict[str, Any]:
        """The epoch whose weights the final score is of, and (select: best) how it was chosen."""
        if not self.chose:
            return {"epoch": epochs_done}
        return {"epoch": self.best_epoch, "selected": {"metric": self.metric, "validation": self.best,
                                                       "epochs_trained": epochs_done, "stopped_early": self.stopped}}

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve, "best": self.best, "best_epoch": self.best_epoch,
                "since_best": self.since_best, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any] | None, payload: dict[str, Any]) -> None:
        """Put back what was chosen before the interruption; ``payload`` is the checkpoint resumed from.

        best.pt is written after the last.pt of its epoch, so a run killed between the
        two has a last.pt that chose its own epoch and a best.pt that is older: the
        weights of that last.pt are the best ones, and best.pt is rewritten from them.
        """
        if state is None:  # written before train.select existed: nothing chosen yet
            return
        self.curve, self.best, self.best_epoch = list(state["curve"]), state["best"], state["best_epoch"]
        self.since_best, self.stopped = state["since_best"], state["stopped"]
        if not self.writes or self.rule != "best" or self.best_epoch is None or self._epoch_on_disk() == self.best_epoch:
            return  # (ranks other than 0 neither write nor read best.pt)
        at_epoch_end = payload["resume"]["sampler"]["batch_index"] == 0
        if payload["epoch"] == self.best_epoch and at_epoch_end:
            self.save_best(payload)
            return
        raise CheckpointError(f"{self.path} does not hold epoch {self.best_epoch}, the best one the checkpoint "
                              f"records ({self.metric} {self.best}); the run cannot be resumed with its choice intact")

    def _epoch_on_disk(self) -> int | None:
        if not self.path.is_file():
            return None
        return load_checkpoint(self.path).get("selected", {}).get("epoch")
