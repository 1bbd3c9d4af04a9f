"""How big and how fast a network is: parameters, mult-adds and CPU images per second.

Compact students are the point of distillation, so a report needs the three numbers a
phone deployment cares about, measured the same way for every run.

Mult-adds convention: like the MobileNet papers' "Mult-Adds", one multiply-accumulate
counts once. ``torch.utils.flop_counter`` counts 2 FLOPs per multiply-accumulate of
convolutions and matrix products, so mult-adds = FLOPs / 2. Biases, batch norm,
activations, pooling and normalisation are not counted (as in those papers), and the
input is one image (batch 1).
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_mflops", "count_parameters", "cpu_throughput"]


def count_parameters(model: nn.Module) -> int:
    """Every parameter, trainable or frozen (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def _image_shape(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def _example_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def count_mflops(model: nn.Module, image_size: int | tuple[int, int]) -> float:
    """Millions of mult-adds (multiply-accumulates) of one RGB image's forward pass.

    Despite the name, this is MACs, not FLOPs: FlopCounterMode's FLOPs / 2 / 1e6
    (see the module docstring), the unit of the MobileNet papers' "Mult-Adds".
    """
    h, w = _image_shape(image_size)
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, h, w, device=_example_device(model))
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e6


def cpu_throughput(
    model: nn.Module,
    image_size: int | tuple[int, int],
    batch_size: int = 64,
    threads: int = 2,
    repeats: int = 3,
) -> float:
    """Median images/s of batched inference on the CPU with ``threads`` torch threads.

    Eval mode, ``torch.no_grad``, random input, one untimed warm-up batch first (to
    exclude one-off allocation and kernel selection). A model on another device is
    copied to the CPU; the caller's model and torch's thread setting are left as they were.
    """
    if batch_size < 1 or threads < 1 or repeats < 1:
        raise ValueError(f"cpu_throughput needs positive batch_size, threads, repeats; got {batch_size}, {threads}, {repeats}")
    h, w = _image_shape(image_size)
    on_cpu = _example_device(model).type == "cpu"
    net = model if on_cpu else copy.deepcopy(model).cpu()
    was_training, old_threads = net.training, torch.get_num_threads()
    net.eval()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0))
        rates = []
        with torch.no_grad():
            net(x)
            for _ in range(repeats):
                start = time.perf_counter()
                net(x)
                rates.append(batch_size / max(time.perf_counter() - start, 1e-9))
    finally:
        torch.set_num_threads(old_threads)
        net.train(was_training)
    return float(statistics.median(rates))
