"""INT8 for phones: static post-training quantization of an exported ONNX embedder.

Weights and activations become 8-bit integers with scales fixed once, from a few hundred
*training* images of the checkpoint's dataset run through the fp32 model (calibration;
never test images, which would leak the evaluation into the model). The file is about a
quarter of the fp32 one, and 8-bit kernels (VNNI on x86, dot-product on ARM) do more
multiply-adds per cycle.

The defaults (:data:`DEFAULT_SETTINGS`) were chosen on the cub100 student (MobileNetV2,
96 px) with ``benchmarks/parity/int8_parity.py``, ``benchmarks/parity/int8_cpu_paths.py`` and
``benchmarks/speed/export_speed.py``, bias correction on the teacher-space MobileNet-0.25 with
``benchmarks/parity/int8_teacher_space.py``; docs/deploy.md ("INT8 for phones") says why each setting won.
The file is made once and runs on CPUs its maker never sees, so the default must give the same
embeddings on all of them: its weights are uint8 (U8U8), whose products every x86 kernel sums
exactly, and ARM runs them on its unsigned dot product. x86 CPUs without VNNI add uint8 x int8
(U8S8) product pairs in saturating 16 bits (:mod:`embdistill.deploy.cpu_features`): full-range int8
weights bent the demo student to a cosine of 0.87 there. 7-bit int8 weights (``reduce_range``)
are exact there too and keep x86's fast U8S8 kernels, at some cost in accuracy.
:data:`WEIGHT_CHOICES` names the three for ``embdistill export --int8-weights``.
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from embdistill.deploy.choices import QUANTIZE_MODES, DeployError

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_SETTINGS",
    "QUANT_FORMATS",
    "WEIGHT_CHOICES",
    "ImageCalibrationReader",
    "QuantSettings",
    "calibration_images",
    "even_batch_size",
    "head_nodes",
    "parity_report",
    "precise_session_config",
    "saturates_without_vnni",
    "quantize_onnx",
    "spread_indices",
    "zero_dead_channels",
]

QUANT_FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
_TYPES = ("uint8", "int8")
# Everything from the global pooling on (pool, linear head, L2 normalisation) is the
# "head"; keep_head_fp32 leaves it in float. On the cub100 student that changed nothing
# in accuracy but kept the 1280x512 linear layer in fp32 (45% of the fp32 file).
_HEAD_START_OPS = ("GlobalAveragePool", "ReduceMean")


@dataclass(frozen=True)
class QuantSettings:
    """How to quantize; every field maps to one onnxruntime.quantization option."""

    # "qdq": Quantize/DequantizeLinear pairs ORT fuses into int8 kernels; "qoperator": QLinear* ops, whose per-channel
    # convolution weights onnxruntime makes int8 whatever weight_type says
    format: str = "qdq"
    per_channel: bool = True  # one weight scale per output channel: MobileNet's depthwise convs need it
    reduce_range: bool = False  # 7-bit weights: U8S8 pair sums stay below 2^15, exact on every x86 path, less accurate
    activation_type: str = "uint8"
    weight_type: str = "uint8"  # U8U8: exact on every CPU; int8 (U8S8) has faster x86 kernels but saturates without VNNI
    calibration_method: str = "percentile"  # ranges clipped at a percentile: rare outliers do not stretch the scale
    percentile: float = 99.999  # calibration_method="percentile" only
    keep_head_fp32: bool = False  # True: pooling, linear head, normalisation stay float (+1.9 MB on MobileNetV2)
    # every layer's bias moved by its mean INT8 - fp32 output error on the calibration images (empirical bias
    # correction, :func:`correct_biases`): a teacher-space MobileNet-0.25's cosine to fp32 went from 0.953 to 0.995
    bias_correction: bool = True
    preprocess: bool = True  # onnxruntime's quant_pre_process: shape inference and graph optimisation first
    images: int = 256  # calibration images
    batch_size: int = 16  # calibration batch

    def __post_init__(self) -> None:
        checks = (
            ("format", self.format, QUANT_FORMATS),
            ("calibration_method", self.calibration_method, CALIBRATION_METHODS),
            ("activation_type", self.activation_type, _TYPES),
            ("weight_type", self.weight_type, _TYPES),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise DeployError(f"quantization {name} must be one of {allowed}, got {value!r}")
        if self.bias_correction and self.format != "qdq":
            raise DeployError("bias_correction needs format 'qdq' (QOperator layers hold their bias in int32 "
                              "inside the fused node); pass bias_correction=False with format 'qoperator'")
        if self.images < 1 or self.batch_size < 1:
            raise DeployError(f"quantization needs >= 1 calibration image and batch size, got {self.images}, {self.batch_size}")
        if not 0 < self.percentile <= 100:
            raise DeployError(f"calibration percentile must lie in (0, 100], got {self.percentile}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> QuantSettings:
        return replace(self, **changes)


DEFAULT_SETTINGS = QuantSettings()

# `embdistill export --int8-weights`: the weights' type and range; docs/deploy.md ("One file, every CPU") measures each.
WEIGHT_CHOICES: dict[str, dict[str, Any]] = {
    "uint8": {"weight_type": "uint8", "reduce_range": False},  # the default: exact everywhere; x86 runs it slower than U8S8
    "int8-7bit": {"weight_type": "int8", "reduce_range": True},  # exact and fast on every x86 path, less accurate
    "int8": {"weight_type": "int8", "reduce_range": False},  # fast and accurate with VNNI or on ARM; saturates on other x86
}


# --------------------------------------------------------------------------- calibration images


def spread_indices(n: int, count: int) -> np.ndarray:
    """``count`` indices evenly spaced through ``range(n)`` (all of them if ``count >= n``)."""
    if count >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, count).round().astype(int)


def _spread(paths: Sequence[Path], count: int) -> list[Path]:
    """``count`` paths evenly spaced through ``paths`` (sorted by class in every reader), so all classes show up."""
    return [paths[i] for i in spread_indices(len(paths), count)]


def calibration_images(
    payload: dict[str, Any], count: int, folder: str | Path | None = None, where: str = "checkpoint"
) -> tuple[list[Path], str]:
    """Training images to calibrate on, and a line saying where they came from.

    From ``folder`` (any images, at any depth) when given, else from the training split
    of the dataset in the checkpoint's config (``data.dataset``, ``data.root``). Test
    images are refused: a ``folder`` holding any image of the checkpoint dataset's test
    split is an error.
    """
    from embdistill.data import DatasetError, load_dataset
    from embdistill.data.imagefiles import list_images

    data = (payload.get("config") or {}).get("data") or {}
    dataset, root = data.get("dataset"), data.get("root")
    if folder is not None:
        found = list_images(folder, what="--calibration folder")
        if dataset and root and Path(root).is_dir():
            try:
                test = {p.resolve() for p in load_dataset(dataset, root, "test").paths}
            except DatasetError:
                test = set()
            leaked = [p for p in found if p.resolve() in test]
            if leaked:
                raise DeployError(
                    f"--calibration {folder} holds {len(leaked)} test image(s) of {where}'s dataset {root} "
                    f"(e.g. {leaked[0]}); calibrate on training images only"
                )
        chosen = _spread(found, count)
        return chosen, f"{len(chosen)} images from {folder}"
    if not dataset or not root:
        raise DeployError(f"{where} names no dataset (config.data.dataset / root) to calibrate on; pass --calibration DIR")
    if not Path(root).is_dir():
        raise DeployError(
            f"{where}'s dataset root {root} (config.data.root) is not a directory here; "
            "pass --calibration DIR with training images"
        )
    try:
        train = load_dataset(dataset, root, "train")
    except DatasetError as err:
        raise DeployError(f"{where}: cannot read the training split of {dataset} at {root} to calibrate on: {err}") from err
    chosen = _spread(train.paths, count)
    return chosen, f"{len(chosen)} of {len(train)} training images of {dataset} at {root}"


def even_batch_size(count: int, batch_size: int) -> int:
    """The largest batch of at most ``batch_size`` that splits ``count`` images into equal batches: onnxruntime's
    histogram calibrators (percentile, entropy) stack every batch's outputs into one array and fail on a short last
    batch, and dropping its images would calibrate on fewer than asked."""
    return max(size for size in range(1, min(count, batch_size) + 1) if count % size == 0)


class ImageCalibrationReader:
    """onnxruntime's CalibrationDataReader over image files: batches preprocessed as the metadata says, all of one
    size (:func:`even_batch_size`)."""

    def __init__(self, paths: Sequence[Path], input_name: str, meta: Any, batch_size: int = 16) -> None:
        from embdistill.data.transforms import eval_transform

        self.paths, self.input_name = list(paths), input_name
        self.batch_size = even_batch_size(len(self.paths), batch_size) if self.paths else batch_size
        self.transform = eval_transform(meta)
        self._batches: Iterator[dict[str, np.ndarray]] | None = None

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        import torch

        from embdistill.data import ImageDataset, ImageList

        items = ImageList(self.paths, np.zeros(len(self.paths), dtype=np.int64), ("calibration",), "calibration")
        dataset = ImageDataset(items, self.transform)
        for start in range(0, len(dataset), self.batch_size):
            batch = torch.stack([dataset[i][0] for i in range(start, min(start + self.batch_size, len(dataset)))])
            yield {self.input_name: batch.numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._batches is None:
            self._batches = self._generate()
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = None


# --------------------------------------------------------------------------- quantize


def head_nodes(model: Any) -> list[str]:
    """Names of the nodes from the first global pooling to the output (the embedding head)."""
    nodes = list(model.graph.node)
    start = next((i for i, n in enumerate(nodes) if n.op_type in _HEAD_START_OPS), None)
    if start is None:
        return []
    downstream, names = set(nodes[start].output), [nodes[start].name]
    for node in nodes[start + 1:]:  # ONNX nodes are topologically sorted
        if downstream & set(node.input):
            downstream.update(node.output)
            names.append(node.name)
    return names


def zero_dead_channels(model: Any, relative: float = 1e-10) -> int:
    """Set to exactly 0 the weights of every Conv/Gemm output channel whose largest weight is below ``relative`` times
    the layer's largest; returns how many channels changed.

    Such channels come from BatchNorm folded in with a scale trained to ~0 (Keras' MobileNet-0.25 has 11, weights of
    1e-23 beside biases up to 4.45). ONNX Runtime quantizes a bias with scale input_scale x weight_scale, so that tiny
    weight scale sends the bias past int32, where it is clipped: the channel's constant output is lost. An all-zero
    channel gets weight scale 1 and keeps its bias; the weights dropped are below ``relative`` of the layer's largest.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            continue  # weight is (in, out): its output channels are columns; our heads export transB=1
        per_channel = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
        dead = (per_channel < relative * per_channel.max()) & (per_channel > 0)
        if dead.any():
            weight = weight.copy()
            weight[dead] = 0
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
            changed += int(dead.sum())
    return changed


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's calibrators print progress to stdout (which holds `embdistill export`'s JSON) and
    its graph cleanup logs a warning per unused constant: keep both out of the command's output."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(2)


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def quantize_onnx(
    fp32: str | Path,
    out: str | Path,
    reader: Any,
    settings: QuantSettings = DEFAULT_SETTINGS,
    props: dict[str, str] | None = None,
) -> Path:
    """Quantize the fp32 ONNX file ``fp32`` into ``out``, calibrated by ``reader``; ``props`` become its metadata_props."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embdistill_quant_") as tmp:
        source = Path(fp32)
        if settings.preprocess:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            source = prepared
        model = onnx.load(str(source))
        if zero_dead_channels(model):
            source = Path(tmp) / "dead_channels_zeroed.onnx"
            onnx.save(model, str(source))
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[settings.calibration_method]
        extra: dict[str, Any] = {"CalibPercentile": settings.percentile} if settings.calibration_method == "percentile" else {}
        with _quiet():
            quantize_static(
                str(source),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=_quant_type(settings.activation_type),
                weight_type=_quant_type(settings.weight_type),
                nodes_to_exclude=head_nodes(model) if settings.keep_head_fp32 else None,
                calibrate_method=method,
                extra_options=extra,
            )
        quantized = onnx.load(str(out))
        if settings.bias_correction:
            correct_biases(model, quantized, reader)  # model: the fp32 graph quantize_static read from source
    if props:
        onnx.helper.set_model_props(quantized, props)
    onnx.checker.check_model(quantized)
    onnx.save(quantized, str(out))
    return out


def _biased_layers(model: Any) -> list[Any]:
    """Every Conv/Gemm with a bias, in graph order (BatchNorm folded into a convolution gives it one)."""
    return [n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]]


def _mean_outputs(model: Any, tensors: Sequence[str], reader: Any) -> list[np.ndarray]:
    """Per-channel (axis 1) means of ``tensors`` over all of ``reader``'s batches, in one pass."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors
                              if t not in known)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    totals: list[Any] = [0.0] * len(tensors)
    counts = [0] * len(tensors)
    if hasattr(reader, "rewind"):
        reader.rewind()
    while (batch := reader.get_next()) is not None:
        for i, value in enumerate(session.run(list(tensors), batch)):
            axes = (0, *range(2, value.ndim))
            totals[i] = totals[i] + value.astype(np.float64).sum(axis=axes)
            counts[i] += value.size // value.shape[1]
    if not counts[0]:
        raise DeployError("bias correction got no calibration batches")
    return [t / c for t, c in zip(totals, counts)]


def _shift_bias(model: Any, node: Any, shift: np.ndarray) -> None:
    """Subtract ``shift`` from ``node``'s bias: a float initializer, or int32 behind a DequantizeLinear."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    name = node.input[2]
    if name in initializers:
        corrected = (numpy_helper.to_array(initializers[name]).astype(np.float64) - shift).astype(np.float32)
    else:
        dq = next((n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == name), None)
        if dq is None or dq.input[0] not in initializers or dq.input[1] not in initializers:
            raise DeployError(f"bias correction: cannot find the bias {name!r} of {node.name} in the quantized model")
        name, scale = dq.input[0], numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float64)
        values = numpy_helper.to_array(initializers[name]).astype(np.float64) - np.round(shift / scale)
        corrected = np.clip(values, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    initializers[name].CopyFrom(numpy_helper.from_array(corrected, name))


def correct_biases(fp32: Any, quantized: Any, reader: Any) -> list[np.ndarray]:
    """Empirical bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019), in place on ``quantized``.

    Rounding weights and activations to 8 bits shifts each layer's mean output on real images, and the shifts add up
    through the network. Layer by layer in graph order, the INT8 model's mean output (per channel, over the
    calibration images) is measured with every earlier layer already corrected, and its difference from the fp32
    model's is subtracted from the layer's bias (the output layer alone recovered half as much). The bias is float,
    or int32 behind a DequantizeLinear: only its values change. One pass over the images per layer.
    Returns the shifts removed (none for a model without biases).
    """
    layers = _biased_layers(fp32)
    if not layers:
        return []
    by_name = {n.name: n for n in quantized.graph.node}
    missing = [n.name for n in layers if n.name not in by_name]
    if missing:
        raise DeployError(f"bias correction: the quantized model lacks the fp32 model's layers {missing[:3]}")
    reference = _mean_outputs(fp32, [n.output[0] for n in layers], reader)
    shifts = []
    for node, expected in zip(layers, reference):  # sequential: a layer's shift includes what earlier ones passed on
        target = by_name[node.name]
        shifts.append(_mean_outputs(quantized, [target.output[0]], reader)[0] - expected)
        _shift_bias(quantized, target, shifts[-1])
    return shifts


def quantization_record(settings: QuantSettings, mode: str, calibration: str) -> dict[str, Any]:
    """What goes into the exported file's metadata (``quantization`` prop) and sidecar."""
    if mode not in QUANTIZE_MODES:
        raise DeployError(f"unknown quantization {mode!r}; expected one of {QUANTIZE_MODES}")
    return {"mode": mode, "calibration": calibration, **settings.to_dict()}


def quantization_prop(record: dict[str, Any]) -> dict[str, str]:
    return {"quantization": json.dumps(record)}


def saturates_without_vnni(record: dict[str, Any] | None) -> bool:
    """Whether a file quantized with ``record`` runs ONNX Runtime's U8S8 kernels at full weight range: on x86
    without VNNI those add product pairs in saturating 16 bits. uint8 weights (U8U8) or 7-bit ones never do.
    onnxruntime's QOperator format quantizes per-channel convolution weights to int8 whatever ``weight_type`` says."""
    if not record:
        return False
    weights = record.get("weight_type", "int8")  # files before 2026-12-05 were all U8S8
    if record.get("format") == "qoperator" and record.get("per_channel", True):
        weights = "int8"
    return weights == "int8" and not record.get("reduce_range", False)


def precise_session_config(record: dict[str, Any] | None, where: str) -> dict[str, str]:
    """ONNX Runtime session config that keeps a quantized file exact on this CPU, with one warning line when needed.

    A U8S8 file (an older default) on an x86 CPU without VNNI runs with
    ``session.x64quantprecision=1``: ONNX Runtime turns its int8 weights into uint8 at load time
    and uses the exact U8U8 kernels, slower but right. Elsewhere nothing changes.
    """
    from embdistill.deploy.cpu_features import cpu_int8

    cpu = cpu_int8()
    if not saturates_without_vnni(record) or not cpu.u8s8_saturates:
        return {}
    warnings.warn(f"{where} is INT8 with int8 weights (U8S8), which this CPU ({cpu.int8_path}) would sum in saturating "
                  "16 bits; running it with ONNX Runtime's exact U8U8 kernels (session.x64quantprecision=1), slower. "
                  "Re-export it with --int8-weights uint8 (the default) or int8-7bit to run exactly everywhere", stacklevel=3)
    return {"session.x64quantprecision": "1"}


# --------------------------------------------------------------------------- parity


def _top1(embeddings: np.ndarray) -> np.ndarray:
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def parity_report(reference: np.ndarray, quantized: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How much a quantized model changes retrieval, every image a query against all others.

    R@1 and MAP@R (in %) of both, the share of queries whose nearest neighbour is
    unchanged, and the cosine between each image's two embeddings (mean and minimum).
    """
    from embdistill.evaluation.metrics import retrieval_metrics

    if reference.shape != quantized.shape or len(labels) != len(reference):
        raise ValueError(f"parity needs matching shapes, got {reference.shape}, {quantized.shape} and {len(labels)} labels")
    ref = retrieval_metrics(reference, labels, ks=(1,), r_precision=False)
    got = retrieval_metrics(quantized, labels, ks=(1,), r_precision=False)
    cosine = (reference * quantized).sum(axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(quantized, axis=1)
    )
    return {
        "images": int(len(labels)),
        "fp32_recall@1": 100 * ref["recall@1"],
        "int8_recall@1": 100 * got["recall@1"],
        "fp32_map@r": 100 * ref["map@r"],
        "int8_map@r": 100 * got["map@r"],
        "top1_unchanged": float((_top1(reference) == _top1(quantized)).mean()),
        "mean_cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
    }
