"""Export an embedder for devices: ONNX or TorchScript, with its preprocessing written inside.

A deployed model is useless without the exact preprocessing it was trained with
(input size, resize, mean/std), so every exported file carries it: ONNX in
``metadata_props`` plus a sidecar ``OUT.json``, TorchScript as the extra file
``embdistill.json``. The exported graph takes a normalised N×3×S×S float tensor
(any N) and returns the L2-normalised N×D embedding. The metadata also holds
``model_fingerprint``, the checkpoint's :func:`~embdistill.checkpoints.checkpoint_fingerprint`:
the embedding space, which `search` and `serve` check a gallery's model against, and
``declared_space``, the teacher's space that a student's output was trained into (absolute
teacher term, :mod:`embdistill.teacher_space`): such a student may query its teacher's
galleries. ``space="teacher"`` (``embdistill export --space teacher``) exports a student whose
absolute term learned a projection with that projection applied, so its output lies there.

``quantize="int8"`` (``embdistill export --quantize int8``) writes a statically
quantized ONNX file with the same metadata plus a ``quantization`` record; the
quantization itself lives in :mod:`embdistill.deploy.quantize`.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import embdistill
from embdistill.data.transforms import Normalization, check_resize, eval_transform  # eval_transform re-exported: defined here before
from embdistill.checkpoints import (
    CheckpointError,
    checkpoint_fingerprint,
    embedder_from_checkpoint,
    load_checkpoint,
    run_checkpoint,
)
from embdistill.teacher_space import TEACHER_SPACE, declared_space, in_teacher_space
from embdistill.deploy.choices import EXPORT_FORMATS, EXPORT_SPACES, QUANTIZE_MODES, DeployError  # re-exported: defined here before
from embdistill.models.embedder import Embedder

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_SPACES",
    "DeployError",
    "EmbeddingOnly",
    "ExportMetadata",
    "ExportResult",
    "default_export_path",
    "default_quantized_path",
    "eval_transform",
    "export_checkpoint",
    "export_onnx",
    "export_torchscript",
    "is_torchscript_file",
    "metadata_from_checkpoint",
    "read_onnx_metadata",
    "read_torchscript_metadata",
    "sidecar_path",
    "space_payload",
]

INPUT_NAME, OUTPUT_NAME = "image", "embedding"
TORCHSCRIPT_EXTRA = "embdistill.json"
DEFAULT_OPSET = 17
RESIZE_RATIO = 256 / 224  # the eval transform's, see engine/batches/loaders.py
INPUT_LAYOUTS = {  # ExportMetadata.input_layout for each data.resize mode
    "crop": "NCHW float32, RGB, resize shorter side to resize_size, centre crop image_size, (x/255 - mean) / std",
    "squash": "NCHW float32, RGB, resize the whole image to image_size x image_size (aspect not kept), (x/255 - mean) / std",
    "pad": "NCHW float32, RGB, resize longer side to image_size (aspect kept), (x/255 - mean) / std, "
           "centred on an image_size x image_size square of zeros",
}


def sidecar_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: the sidecar sits next to its file and keeps its full name."""
    return Path(f"{path}.json")


@dataclass(frozen=True)
class ExportMetadata:
    """The preprocessing and shape contract of an exported embedder."""

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    backbone: str
    pooling: str
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    input_layout: str = INPUT_LAYOUTS["crop"]
    output_layout: str = "N x embedding_dim float32, L2-normalised"
    resize: str = "crop"  # data.resize the model was trained with: crop | squash | pad (older files: crop)
    source: str = ""
    model_fingerprint: str = ""  # checkpoint_fingerprint of the source checkpoint: its embedding space ("": unknown, older file)
    declared_space: str = ""  # the teacher's fingerprint when the output was trained into its space (absolute term), else ""
    embdistill_version: str = embdistill.__version__

    @property
    def normalization(self) -> Normalization:
        return Normalization(tuple(self.mean), tuple(self.std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ExportMetadata:
        """Rebuild from stored metadata; ``where`` names the file in the error if a key is missing."""
        names = {f.name for f in fields(cls)}
        required = ("image_size", "resize_size", "mean", "std", "embedding_dim", "backbone", "pooling")
        missing = [k for k in required if k not in data]
        if missing:
            raise DeployError(
                f"{where}: embdistill metadata lacks {missing}; expected a file written by `embdistill export`"
            )
        try:
            values = {k: v for k, v in data.items() if k in names}
            values.update(
                image_size=int(values["image_size"]),
                resize_size=int(values["resize_size"]),
                embedding_dim=int(values["embedding_dim"]),
                mean=tuple(float(v) for v in values["mean"]),
                std=tuple(float(v) for v in values["std"]),
            )
            Normalization(values["mean"], values["std"])  # 3 means, 3 positive stds
            check_resize(values.get("resize", "crop"))
            meta = cls(**values)
        except (TypeError, ValueError) as err:
            raise DeployError(f"{where}: malformed embdistill metadata ({err}): {data}") from err
        return meta

    def to_props(self) -> dict[str, str]:
        """ONNX metadata_props are strings: plain strings as they are, everything else as JSON."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> ExportMetadata:
        types = {f.name: f.type for f in fields(cls)}
        return cls.from_dict({k: v if types[k] == "str" else json.loads(v) for k, v in props.items() if k in types}, where)


def metadata_from_checkpoint(payload: dict[str, Any], model: Embedder, source: str = "") -> ExportMetadata:
    size = int(payload["image_size"])
    norm = model.normalization
    if "normalization" in payload:
        mean, std = payload["normalization"]
        norm = Normalization(tuple(mean), tuple(std))
    resize = check_resize(str(((payload.get("config") or {}).get("data") or {}).get("resize", "crop")))
    projected = (payload.get(TEACHER_SPACE) or {}).get("projected_from_dim")
    return ExportMetadata(
        image_size=size,
        resize_size=round(size * RESIZE_RATIO),
        mean=tuple(float(m) for m in norm.mean),
        std=tuple(float(s) for s in norm.std),
        embedding_dim=int(model.dim),
        backbone=str(payload["model_config"].get("backbone", "")),
        pooling=str(model.pooling),
        source=source,
        model_fingerprint=checkpoint_fingerprint(payload),
        declared_space=declared_space(payload),
        resize=resize,
        input_layout=INPUT_LAYOUTS[resize],
        **({"output_layout": f"N x embedding_dim float32, L2-normalised, in the teacher's embedding space: the "
                             f"student's {projected}-d embedding through its learned projection"} if projected else {}),
    )


def space_payload(payload: dict[str, Any], space: str, where: str) -> dict[str, Any]:
    """The checkpoint payload to export for ``space``: ``"own"`` as it is, ``"teacher"`` the student as it embeds
    into its teacher's space (:func:`~embdistill.teacher_space.in_teacher_space`)."""
    if space not in EXPORT_SPACES:
        raise DeployError(f"unknown space {space!r}; expected one of {EXPORT_SPACES}")
    if space == "own":
        return payload
    try:
        return in_teacher_space(payload, where)
    except CheckpointError as err:
        raise DeployError(str(err)) from err


class EmbeddingOnly(nn.Module):
    """The embedder with a single tensor output: exporters and device runtimes want plain tensors."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, x: Tensor) -> Tensor:
        return self.embedder(x).embedding


def default_export_path(checkpoint: str | Path, fmt: str, space: str = "own") -> Path:
    """Next to the checkpoint: ``run/last.pt`` -> ``run/last.onnx`` or ``run/last.torchscript.pt``; a run
    directory stands for the checkpoint it is scored by (``best.pt`` when it chose an epoch). ``space="teacher"``:
    ``run/last.teacher_space.onnx``, so the student's own export is not overwritten."""
    path = Path(checkpoint)
    if path.is_dir():
        path = run_checkpoint(path)
    if space == "teacher":
        path = path.with_name(f"{path.stem}.teacher_space{path.suffix}")
    return path.with_suffix(".onnx" if fmt == "onnx" else ".torchscript.pt")


def export_onnx(model: Embedder, meta: ExportMetadata, out: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """ONNX with a dynamic batch axis, the metadata in ``metadata_props`` and in ``OUT.json``."""
    import onnx

    if opset < 17:
        raise DeployError(f"ONNX opset must be >= 17, got {opset}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapped = EmbeddingOnly(model).eval()
    example = torch.zeros(2, 3, meta.image_size, meta.image_size)
    # The dynamo exporter needs onnxscript, which is not a dependency; the TorchScript-based
    # one (dynamo=False) handles these CNNs and is exact. Its deprecation notice is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        torch.onnx.export(
            wrapped,
            (example,),
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=[meta.input_name],
            output_names=[meta.output_name],
            dynamic_axes={meta.input_name: {0: "batch"}, meta.output_name: {0: "batch"}},
            do_constant_folding=True,
        )
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, meta.to_props())
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    sidecar_path(out).write_text(json.dumps({"format": "onnx", **meta.to_dict()}, indent=2) + "\n")
    return out


def export_torchscript(model: Embedder, meta: ExportMetadata, out: str | Path) -> Path:
    """A traced TorchScript module; the metadata travels inside as ``embdistill.json``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapped = EmbeddingOnly(model).eval()
    example = torch.zeros(2, 3, meta.image_size, meta.image_size)
    extra = json.dumps({"format": "torchscript", **meta.to_dict()}, indent=2)
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, still what mobile runtimes load
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(wrapped, example)
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_EXTRA: extra})
    return out


def _onnx_props(path: Path) -> dict[str, str]:
    import onnx

    if not path.is_file():
        raise DeployError(f"ONNX model {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise DeployError(f"{path}: cannot be read as an ONNX model ({type(err).__name__}: {err})") from err
    return {p.key: p.value for p in proto.metadata_props}


def read_quantization_record(path: str | Path) -> dict[str, Any] | None:
    """The ``quantization`` record of an INT8 file written by ``embdistill export`` (None: a float file)."""
    path = Path(path)
    raw = _onnx_props(path).get("quantization")
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise DeployError(f"{path}: malformed quantization record in metadata_props ({err})") from err
    if not isinstance(record, dict):
        raise DeployError(f"{path}: quantization record must be a JSON object, got {raw[:80]!r}")
    return record


def read_onnx_metadata(path: str | Path) -> ExportMetadata:
    path = Path(path)
    props = _onnx_props(path)
    if "image_size" not in props and sidecar_path(path).is_file():
        return ExportMetadata.from_dict(json.loads(sidecar_path(path).read_text()), str(sidecar_path(path)))
    try:
        return ExportMetadata.from_props(props, str(path))
    except json.JSONDecodeError as err:
        raise DeployError(f"{path}: malformed embdistill metadata_props ({err})") from err


def is_torchscript_file(path: str | Path) -> bool:
    """A TorchScript archive written by :func:`export_torchscript` (holds ``*/extra/embdistill.json``)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith(f"/extra/{TORCHSCRIPT_EXTRA}") for n in archive.namelist())


def read_torchscript_metadata(path: str | Path) -> ExportMetadata:
    path = Path(path)
    if not is_torchscript_file(path):
        raise DeployError(f"{path}: not a TorchScript file written by `embdistill export` (no extra/{TORCHSCRIPT_EXTRA})")
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_EXTRA}"))
        return ExportMetadata.from_dict(json.loads(archive.read(name)), f"{path}:{name}")


@dataclass
class ExportResult:
    path: Path
    format: str
    metadata: ExportMetadata
    size_bytes: int
    max_abs_diff: float | None  # exported vs PyTorch on a random batch (fp32) or on calibration images (int8); None if not checked
    min_cosine: float | None = None  # int8: lowest cosine between its embeddings and PyTorch's on calibration images
    quantization: dict[str, Any] | None = None  # int8: the settings and calibration images, as in the metadata
    parity: dict[str, Any] | None = None  # int8: the check against PyTorch and the CPU it ran on, as in the sidecar


def _run_exported(path: Path, fmt: str, meta: ExportMetadata, x: Tensor) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([meta.output_name], {meta.input_name: x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(x).numpy()


def _check_against_pytorch(model: Embedder, path: Path, fmt: str, meta: ExportMetadata, x: Tensor | None = None) -> tuple[float, float]:
    """(max |exported - PyTorch|, min cosine) on ``x`` (default: a random batch of 3): catches a broken export
    early, not a parity test."""
    if x is None:
        x = torch.randn(3, 3, meta.image_size, meta.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).embedding.numpy()
    got = _run_exported(path, fmt, meta, x)
    return float(abs(got - expected).max()), float((got * expected).sum(axis=1).min())


def default_quantized_path(checkpoint: str | Path, mode: str, space: str = "own") -> Path:
    """``run/last.pt`` -> ``run/last.int8.onnx`` (``space="teacher"``: ``run/last.teacher_space.int8.onnx``)."""
    return default_export_path(checkpoint, "onnx", space).with_suffix(f".{mode}.onnx")


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    quantize: str | None = None,
    calibration: str | Path | None = None,
    quant_settings: Any = None,
    space: str = "own",
) -> ExportResult:
    """Load a checkpoint (file or run directory), export its embedder in eval mode, and check it runs.

    ``quantize="int8"`` (ONNX only) writes a statically quantized model instead, calibrated
    on training images (``calibration`` folder, else the checkpoint's dataset): see
    :mod:`embdistill.deploy.quantize`; ``quant_settings`` overrides its defaults. ``space="teacher"``:
    a student trained with the absolute teacher term, its output in the teacher's space
    (its learned projection applied, L2-normalised); see :func:`space_payload`.
    """
    if fmt not in EXPORT_FORMATS:
        raise DeployError(f"unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise DeployError(f"unknown quantization {quantize!r}; expected one of {QUANTIZE_MODES}")
    if quantize is not None and fmt != "onnx":
        raise DeployError(f"--quantize {quantize} needs --format onnx (got {fmt}): TorchScript export stays fp32")
    if quantize is None and calibration is not None:
        raise DeployError("--calibration only applies with --quantize int8")
    payload = space_payload(load_checkpoint(checkpoint), space, f"checkpoint {checkpoint}")
    model = embedder_from_checkpoint(payload).eval()
    meta = metadata_from_checkpoint(payload, model, source=str(Path(checkpoint).resolve()))
    if quantize is not None:
        out = Path(out) if out is not None else default_quantized_path(checkpoint, quantize, space)
        return _export_quantized(checkpoint, payload, model, meta, quantize, out, opset, verify, calibration, quant_settings)
    out = Path(out) if out is not None else default_export_path(checkpoint, fmt, space)
    if fmt == "onnx":
        export_onnx(model, meta, out, opset)
    else:
        export_torchscript(model, meta, out)
    diff = _check_against_pytorch(model, out, fmt, meta)[0] if verify else None
    return ExportResult(out, fmt, meta, out.stat().st_size, diff)


def _export_quantized(
    checkpoint: str | Path, payload: dict[str, Any], model: Embedder, meta: ExportMetadata, mode: str,
    out: str | Path | None, opset: int, verify: bool, calibration: str | Path | None, settings: Any,
) -> ExportResult:
    """fp32 ONNX in a temporary folder, then quantized into ``out`` with the metadata (and the settings) kept."""
    import tempfile

    from embdistill.deploy import quantize as q

    settings = settings or q.DEFAULT_SETTINGS
    out = Path(out) if out is not None else default_quantized_path(checkpoint, mode)
    images, described = q.calibration_images(payload, settings.images, calibration, where=f"checkpoint {checkpoint}")
    reader = q.ImageCalibrationReader(images, meta.input_name, meta, settings.batch_size)
    record = q.quantization_record(settings, mode, described)
    with tempfile.TemporaryDirectory(prefix="embdistill_export_") as tmp:
        fp32 = export_onnx(model, meta, Path(tmp) / "fp32.onnx", opset)
        q.quantize_onnx(fp32, out, reader, settings, {**meta.to_props(), **q.quantization_prop(record)})
    diff = cosine = parity = None
    if verify:  # on real images: int8 on random noise says nothing
        import onnxruntime as ort

        from embdistill.deploy.cpu_features import cpu_int8

        reader.rewind()
        x = torch.from_numpy(reader.get_next()[meta.input_name][:8])
        diff, cosine = _check_against_pytorch(model, out, "onnx", meta, x)
        # integer kernels differ between CPUs (embdistill.deploy.cpu_features): the figures hold for this one
        parity = {"images": len(x), "min_cosine": cosine, "max_abs_diff": diff, "cpu": cpu_int8().to_dict(),
                  "onnxruntime": ort.__version__}
    sidecar = {"format": "onnx", **meta.to_dict(), "quantization": record, **({"parity": parity} if parity else {})}
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2) + "\n")
    return ExportResult(out, "onnx", meta, out.stat().st_size, diff, cosine, record, parity)
