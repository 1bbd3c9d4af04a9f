"""Backbones by name and the embedding network built on them.

The config that describes one (``ModelConfig``) lives with the other config sections in
``embdistill.config``.
"""
from embdistill.models import efficientnet_lite, mobilenet, resnet  # noqa: F401  (register backbones)
from embdistill.models.backbone import Backbone
from embdistill.models.embedder import Embedder, EmbedderSpec, create_embedder
from embdistill.models.output import EmbedderOutput
from embdistill.models.registry import create_backbone, list_backbones, register_backbone
from embdistill.models.weights import WeightSource, WeightsError, resolve_weights

__all__ = [
    "Backbone",
    "Embedder",
    "EmbedderOutput",
    "EmbedderSpec",
    "WeightSource",
    "WeightsError",
    "create_backbone",
    "create_embedder",
    "list_backbones",
    "register_backbone",
    "resolve_weights",
]
