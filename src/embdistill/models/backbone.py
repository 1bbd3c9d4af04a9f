"""The one backbone interface every architecture is adapted to.

A backbone is an ordered list of named stages. Running them in order gives the
final feature map for the embedding head, and any stage's output can be
returned on request: that is all the hint and attention losses need, whatever
the architecture.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from embdistill.data.transforms import IMAGENET, Normalization


class Backbone(nn.Module):
    """Named stages run in sequence; ``forward`` returns the last map and the requested ones."""

    def __init__(self, stages: "OrderedDict[str, nn.Module]", normalization: Normalization = IMAGENET) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.normalization = normalization
        self.channels = self._probe_channels()

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self.stages.keys())

    @property
    def num_features(self) -> int:
        return self.channels[self.stage_names[-1]]

    def forward(self, x: Tensor, return_layers: tuple[str, ...] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        unknown = set(return_layers) - set(self.stages)
        if unknown:
            raise KeyError(f"unknown layer(s) {sorted(unknown)}; this backbone has {list(self.stage_names)}")
        features: dict[str, Tensor] = {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in return_layers:
                features[name] = x
        return x, features

    @torch.no_grad()
    def _probe_channels(self) -> dict[str, int]:
        """Channel count of every stage, read off one tiny forward pass in eval mode."""
        was_training = self.training
        self.eval()
        x = torch.zeros(1, 3, 64, 64)
        channels = {}
        for name, stage in self.stages.items():
            x = stage(x)
            channels[name] = int(x.shape[1])
        self.train(was_training)
        return channels
