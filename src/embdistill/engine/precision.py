"""Speed settings for the student's training step: bf16 autocast and channels-last memory layout.

Both pay off on GPUs (tensor cores, NHWC convolutions) and mostly cost time on
CPUs, so ``auto`` turns them on for CUDA only.
"""
from __future__ import annotations

import torch

from embdistill.config import ConfigError


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``train.precision`` -> the autocast dtype of the student's forward pass, or None for fp32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision: expected auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def memory_format(channels_last: bool | str, device: torch.device) -> torch.memory_format:
    """``train.channels_last`` -> the memory format for the networks and their input images."""
    if channels_last not in (True, False, "auto"):
        raise ConfigError(f"train.channels_last: expected auto, true or false, got {channels_last!r}")
    on = device.type == "cuda" if channels_last == "auto" else channels_last
    return torch.channels_last if on else torch.contiguous_format
