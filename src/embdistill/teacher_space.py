"""A student trained into its teacher's embedding space: what its checkpoint records, and the embedder whose
output lies there.

The absolute teacher term (``AbsoluteTeacherLoss``) pulls the student's embedding of an image onto the
teacher's, so the student can query a gallery that the teacher embedded: the teacher embeds the gallery
once on a server, phones query it with the student (docs/deploy.md, "One gallery, two networks"). The
student's checkpoint records that space under ``teacher_space``:

- ``fingerprint``: the teacher checkpoint's :func:`~embdistill.checkpoints.checkpoint_fingerprint`,
  the space itself, which the teacher's galleries record;
- ``teacher``: the teacher checkpoint's path, for people;
- ``term``: the objective term that trained it (``absolute``);
- ``projection``: ``None`` when the two embedding sizes are equal (the student's own embedding is trained
  onto the teacher's), else the term's learned (teacher_dim, student_dim) map at the step of the weights:
  the student reaches the teacher's space only through it.

Relation-only terms (relative, RKD, DarkRank) transfer distances, not positions: a student trained by them
alone records nothing, and its embeddings cannot be compared with the teacher's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from embdistill.checkpoints import CheckpointError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["TEACHER_SPACE", "TeacherSpace", "declared_space", "in_teacher_space", "teacher_space_of"]

TEACHER_SPACE = "teacher_space"  # the checkpoint entry


@dataclass
class TeacherSpace:
    """The run's absolute teacher term and the teacher it pulls towards; :meth:`record` is the checkpoint entry."""

    fingerprint: str
    teacher: str
    term: str
    loss: nn.Module  # the AbsoluteTeacherLoss, whose projection (if any) trains with the student

    def record(self) -> dict[str, Any]:
        """The ``teacher_space`` entry, with the projection as it is now (saved beside the same step's weights)."""
        projection = getattr(self.loss, "projection", None)
        return {
            "fingerprint": self.fingerprint,
            "teacher": self.teacher,
            "term": self.term,
            "projection": None if projection is None else projection.weight.detach().cpu().clone(),
        }


def teacher_space_of(terms: dict[str, nn.Module], weights: dict[str, float], teacher_fingerprint: str,
                     teacher: str) -> TeacherSpace | None:
    """The first absolute teacher term with a positive weight, or None: only that term trains the student
    into the teacher's space (``terms`` / ``weights``: the objective's)."""
    from embdistill.losses.distill import AbsoluteTeacherLoss

    for name, loss in terms.items():
        if isinstance(loss, AbsoluteTeacherLoss) and weights.get(name, 0.0) > 0:
            return TeacherSpace(teacher_fingerprint, teacher, name, loss)
    return None


def declared_space(payload: dict[str, Any]) -> str:
    """The teacher space that this checkpoint's own output lies in, or "" (none, or only through a projection)."""
    record = payload.get(TEACHER_SPACE)
    if not record or record.get("projection") is not None:
        return ""
    return str(record["fingerprint"])


def in_teacher_space(payload: dict[str, Any], where: str) -> dict[str, Any]:
    """The checkpoint payload of the student as it embeds into its teacher's space.

    Without a projection the student's own embedding is already there: ``payload`` as it is. With one,
    the projection is folded into the head: the embedding is L2(P · L2(W f + b)) = L2(P W f + P b), the
    same vectors (to float rounding) from a plain embedder of the teacher's size, so ONNX, TorchScript,
    INT8 and every loader take it unchanged. It is another network than the student's own output, with
    its own fingerprint, and it declares the teacher's (:func:`declared_space`). ``where`` names the file.
    """
    record = payload.get(TEACHER_SPACE)
    if not record:
        raise CheckpointError(
            f"{where} records no teacher space: only a student distilled with the absolute teacher term "
            "(distill.terms: [{name: absolute}]) is trained into its teacher's embedding space"
        )
    projection = record.get("projection")
    if projection is None:
        return payload
    state, config = dict(payload["model_state"]), dict(payload["model_config"])
    p = projection.detach().to(torch.float64)
    if "head.weight" in state:
        weight, bias = state["head.weight"], state["head.bias"]
        if weight.shape[0] != p.shape[1]:
            raise CheckpointError(f"{where}: teacher_space projection takes {p.shape[1]}-d embeddings, "
                                  f"the student embeds in {weight.shape[0]}-d")
        dtype = weight.dtype
        state["head.weight"] = (p @ weight.to(torch.float64)).to(dtype)
        state["head.bias"] = (p @ bias.to(torch.float64)).to(dtype)
    else:  # model.dim None: no head, the pooled features are the embedding
        state["head.weight"] = p.to(torch.float32)
        state["head.bias"] = torch.zeros(p.shape[0])
    config["dim"] = int(p.shape[0])
    return {**payload, "model_config": config, "model_state": state,
            TEACHER_SPACE: {**record, "projection": None, "projected_from_dim": int(p.shape[1])}}
