"""The device a run asks for (``device: auto | cpu | cuda | cuda:N``) as a ``torch.device``.

Its own module because the trainer, ``embdistill evaluate`` and the report all need
it, and none of them should import another just for this.
"""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
