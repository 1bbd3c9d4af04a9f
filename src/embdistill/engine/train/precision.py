"""Speed settings for the student's training step: bf16 autocast and channels-last memory layout.

Both pay off on GPUs (tensor cores, NHWC convolutions) and mostly cost time on
CPUs, so ``auto`` turns them on for CUDA only. Both settings are checked when the
config is read (config.py), so every value here is valid.
"""
from __future__ import annotations

import torch


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``train.precision`` -> the autocast dtype of the student's forward pass, or None for fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def memory_format(channels_last: bool | str, device: torch.device) -> torch.memory_format:
    """``train.channels_last`` -> the memory format for the networks and their input images."""
    on = device.type == "cuda" if channels_last == "auto" else channels_last
    return torch.channels_last if on else torch.contiguous_format
