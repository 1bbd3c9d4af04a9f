"""What INT8 quantization does to the graph: pads stay integers, dead channels keep their bias, biases are corrected.

Each was a loss measured on a teacher-space MobileNet-0.25 (benchmarks/results/int8_teacher_space_tuning.md); here on
small hand-made models whose right answer is known.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn import functional as F

from embdistill.config import ModelConfig
from embdistill.deploy.quantize import DEFAULT_SETTINGS, correct_biases, quantize_onnx, zero_dead_channels
from embdistill.models import create_embedder
from embdistill.models.mobilenet import Conv2dSame


class _Batches:
    """Calibration batches for quantize_onnx, rewindable (bias correction reads them again)."""

    def __init__(self, batches: list[np.ndarray], name: str = "x") -> None:
        self.batches, self.name, self.i = batches, name, 0

    def get_next(self) -> dict | None:
        if self.i == len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():  # the TorchScript-based exporter's deprecation notice, as in export.py
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path


class _Embedding(nn.Module):
    def __init__(self, embedder: nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedder(x).embedding


def _run(path: Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    source = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_same_padding_is_tensorflows_asymmetric_rule() -> None:
    """3x3 at stride 2: an even side pads 0 before and 1 after, an odd side 1 and 1; stride 1 is symmetric."""
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, 2, bias=False)
    for height, width, pads in ((8, 8, (0, 1, 0, 1)), (7, 7, (1, 1, 1, 1)), (8, 7, (1, 1, 0, 1))):
        x = torch.randn(1, 2, height, width)
        expected = F.conv2d(F.pad(x, pads), conv.weight, stride=2)
        assert torch.equal(conv(x), expected)
        assert conv(x).shape[-2:] == ((height + 1) // 2, (width + 1) // 2)


def test_mobilenet_v1_int8_never_quantizes_its_padding(tmp_path: Path) -> None:
    """The pads are computed from the input's shape at run time; in float, INT8 sent a pad of 1 through a uint8
    step and cast 0.9995 to 0. They must be integer arithmetic that no Quantize/DequantizeLinear touches."""
    torch.manual_seed(0)
    model = create_embedder(ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.25}, dim=16))
    fp32 = _export(_Embedding(model), torch.rand(2, 3, 32, 32), tmp_path / "fp32.onnx")
    graph = onnx.load(str(fp32)).graph
    assert not [n.name for n in graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT]
    x = [np.random.default_rng(i).uniform(-1, 1, (4, 3, 32, 32)).astype(np.float32) for i in range(2)]
    int8 = onnx.load(str(quantize_onnx(fp32, tmp_path / "int8.onnx", _Batches(x), DEFAULT_SETTINGS.with_(bias_correction=False))))
    producer = {out: node for node in int8.graph.node for out in node.output}
    pads = [node.input[1] for node in int8.graph.node if node.op_type == "Pad"]
    assert len(pads) == 5  # the stem and the four stride-2 depthwise convolutions
    seen, todo = set(), list(pads)
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        assert node.op_type not in ("QuantizeLinear", "DequantizeLinear"), f"{node.name} quantizes a pad amount"
        if node.op_type != "Shape":  # reads only its input's shape
            todo += list(node.input)
    assert any(name.endswith("/Shape") or "Shape_" in name for name in seen)  # the walk did reach the input's shape


def test_a_dead_channel_keeps_its_bias_through_int8(tmp_path: Path) -> None:
    """BatchNorm with a scale trained to ~0 folds into weights of 1e-23 beside a real bias. Quantized as they are,
    the bias's scale (input x weight scale) is so small that the bias overflows int32 and is clipped; zeroed, the
    channel gets a usable scale and still outputs its bias."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[0.5, -0.25, 1.0], [1e-23, -1e-23, 1e-23]]).view(2, 3, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 4.0]))
    fp32 = _export(conv, torch.rand(2, 3, 4, 4), tmp_path / "fp32.onnx")
    model = onnx.load(str(fp32))
    assert zero_dead_channels(model) == 1
    weight = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == model.graph.node[0].input[1]))
    assert (weight[1] == 0).all() and np.array_equal(weight[0].ravel(), [0.5, -0.25, 1.0])
    x = np.random.default_rng(0).uniform(0, 1, (8, 3, 4, 4)).astype(np.float32)
    int8 = quantize_onnx(fp32, tmp_path / "int8.onnx", _Batches([x]), DEFAULT_SETTINGS.with_(calibration_method="minmax"))
    got, expected = _run(int8, x), _run(fp32, x)
    step = (expected.max() - min(expected.min(), 0)) / 255
    assert np.abs(got[:, 1] - 4.0).max() <= step  # the constant channel survives
    assert np.abs(got - expected).max() <= 2 * step


def test_bias_correction_removes_the_mean_int8_error(tmp_path: Path) -> None:
    """One weight scale for the layer (per-tensor) rounds four channels' small positive weights to 0: on positive
    inputs those channels fall short by w . mean(x) on average, the shift correction must measure and remove."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1)
    with torch.no_grad():
        conv.weight[:4] = 0.1 * torch.randn(4, 16, 1, 1)
        conv.weight[0, 0] = 2.0  # sets the one weight scale: a uint8 step of about 0.009
        conv.weight[4:] = 0.003 + 0.0003 * torch.randn(4, 16, 1, 1)  # below half a step: all rounded to 0
    fp32 = _export(conv, torch.rand(2, 16, 4, 4), tmp_path / "fp32.onnx")
    x = [np.random.default_rng(i).uniform(0, 1, (16, 16, 4, 4)).astype(np.float32) for i in range(4)]
    settings = DEFAULT_SETTINGS.with_(bias_correction=False, per_channel=False, calibration_method="minmax")
    plain = onnx.load(str(quantize_onnx(fp32, tmp_path / "plain.onnx", _Batches(x), settings)))
    corrected = onnx.ModelProto()
    corrected.CopyFrom(plain)
    shifts = correct_biases(onnx.load(str(fp32)), corrected, _Batches(x))
    batch = np.concatenate(x)
    lost = -(conv.weight[4:, :, 0, 0].detach().numpy() @ batch.mean(axis=(0, 2, 3)))  # what the zeroed weights gave
    assert len(shifts) == 1 and np.allclose(shifts[0][4:], lost, atol=0.004) and lost.max() < -0.02
    reference, before, after = _run(fp32, batch), _run(plain, batch), _run(corrected, batch)
    mean_error = lambda y: np.abs((y - reference).mean(axis=(0, 2, 3)))  # noqa: E731
    step = (reference.max() - min(reference.min(), 0)) / 255  # the output's own uint8 step
    assert mean_error(after).max() <= step / 2 < 0.02 < mean_error(before)[4:].min()
    assert np.abs(after - reference).mean() < np.abs(before - reference).mean()
    by_default = quantize_onnx(fp32, tmp_path / "default.onnx", _Batches(x), settings.with_(bias_correction=True))
    assert np.array_equal(_run(by_default, batch), after)  # the setting does exactly this
