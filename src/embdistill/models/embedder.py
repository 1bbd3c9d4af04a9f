"""The embedding network: backbone -> global pooling -> linear to ``dim`` -> L2 normalise."""
from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embdistill.data.transforms import Normalization
from embdistill.models.backbone import Backbone
from embdistill.models.output import EmbedderOutput
from embdistill.models.registry import create_backbone

Pooling = Literal["avg", "max", "avgmax"]
POOLINGS: tuple[str, ...] = get_args(Pooling)


class EmbedderSpec(Protocol):
    """What :func:`create_embedder` reads: ``embdistill.config.ModelConfig`` (the config sits above the models,
    so this module names the fields it needs rather than importing it)."""

    backbone: str
    pretrained: bool | str
    dim: int | None
    pooling: str
    freeze_batchnorm: bool
    backbone_args: dict[str, Any]


class Embedder(nn.Module):
    def __init__(self, backbone: Backbone, dim: int | None = 512, pooling: str = "avg", freeze_batchnorm: bool = False) -> None:
        super().__init__()
        self.freeze_batchnorm = freeze_batchnorm
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        # Without a head, an ImageNet backbone's pooled features are a strong teacher with no training at all.
        self.head = nn.Linear(backbone.num_features, dim) if dim is not None else nn.Identity()
        self.dim = dim if dim is not None else backbone.num_features

    def train(self, mode: bool = True) -> "Embedder":
        """Like ``nn.Module.train``, but BatchNorm layers stay in eval mode when frozen.

        A class-balanced batch of P classes is a biased sample of the data, so its
        statistics would drag pretrained running means away from ImageNet's.
        """
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @property
    def normalization(self) -> Normalization:
        return self.backbone.normalization

    def pool(self, fmap: Tensor) -> Tensor:
        if self.pooling == "avg":
            return fmap.mean(dim=(2, 3))
        if self.pooling == "max":
            return fmap.amax(dim=(2, 3))
        return fmap.mean(dim=(2, 3)) + fmap.amax(dim=(2, 3))

    def forward(self, x: Tensor, return_layers: tuple[str, ...] = ()) -> EmbedderOutput:
        fmap, features = self.backbone(x, return_layers)
        embedding = F.normalize(self.head(self.pool(fmap)), dim=1)
        return EmbedderOutput(embedding, features)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return self.forward(x).embedding

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Backbone and head parameters, for separate learning rates."""
        return list(self.backbone.parameters()), list(self.head.parameters())


def create_embedder(config: EmbedderSpec) -> Embedder:
    """The embedder a model config describes (``embdistill.config.ModelConfig``)."""
    backbone = create_backbone(config.backbone, pretrained=config.pretrained, **config.backbone_args)
    return Embedder(backbone, dim=config.dim, pooling=config.pooling, freeze_batchnorm=config.freeze_batchnorm)
