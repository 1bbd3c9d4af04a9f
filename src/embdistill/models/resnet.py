"""torchvision ResNets: the paper's teacher (ResNet-101) and student (ResNet-18)."""
from __future__ import annotations

from collections import OrderedDict

import torchvision
from torch import nn

from embdistill.models.backbone import Backbone
from embdistill.models.registry import register_backbone
from embdistill.models.weights import WeightSource, load_pretrained

_TORCHVISION_URL = "https://download.pytorch.org/models/"
_WEIGHTS = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
}


def _resnet(arch: str, pretrained: bool | str) -> Backbone:
    net = getattr(torchvision.models, arch)(weights=None)
    filename = _WEIGHTS[arch]
    load_pretrained(net, pretrained, WeightSource(arch, filename, url=_TORCHVISION_URL + filename))
    stages = OrderedDict(
        stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        layer1=net.layer1,
        layer2=net.layer2,
        layer3=net.layer3,
        layer4=net.layer4,
    )
    return Backbone(stages)


@register_backbone
def resnet18(pretrained: bool | str = False) -> Backbone:
    return _resnet("resnet18", pretrained)


@register_backbone
def resnet34(pretrained: bool | str = False) -> Backbone:
    return _resnet("resnet34", pretrained)


@register_backbone
def resnet50(pretrained: bool | str = False) -> Backbone:
    return _resnet("resnet50", pretrained)


@register_backbone
def resnet101(pretrained: bool | str = False) -> Backbone:
    return _resnet("resnet101", pretrained)
