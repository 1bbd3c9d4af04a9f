"""The teacher terms (``distill.terms`` entries) that the strong benchmark and its tuning share,
and the two schedule overrides both use.

Each term is a dict as a config holds it; ``weighted`` sets its λ and arguments, so a row or a trial
reads as the terms it combines.
"""
from __future__ import annotations

REL = {"name": "relative", "weight": 1.0, "args": {"reduction": "mean"}}  # the paper's: RMS over the batch's pairs
REL_SCALED = {"name": "relative", "weight": 1.0, "args": {"reduction": "mean", "scale": "mean"}}  # scale-free distances
ABS = {"name": "absolute", "weight": 1.0}
RKD = ({"name": "rkd_distance", "weight": 25.0}, {"name": "rkd_angle", "weight": 50.0})  # Park et al.'s weights
DARKRANK = {"name": "darkrank", "weight": 1.0, "args": {"method": "listnet"}}

BB1 = "train.backbone_lr_mult=1.0"  # the backbone at the head's rate, not the paper's 0.1x
P16 = ("train.classes_per_batch=16", "train.images_per_class=4")  # 16 species x 4 images a batch


def weighted(term: dict, weight: float, **args) -> dict:
    """``term`` with λ = ``weight`` and ``args`` added to its own."""
    out = {**term, "weight": weight}
    if args or "args" in term:
        out["args"] = {**term.get("args", {}), **args}
    return out
