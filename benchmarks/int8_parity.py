"""INT8 against fp32 on the cub100 test species: does quantization change what the student retrieves?

    .venv/bin/python benchmarks/int8_parity.py --checkpoint runs/dev13/student

Exports the checkpoint to fp32 ONNX, then quantizes it once per setting in ``VARIANTS``
(the first is ``embdistill export --quantize int8``'s default) with 256 calibration images
from the *training* species, and embeds every test image (the 42 unseen species) with
each model, all from the same preprocessed tensors. For each setting: R@1 and MAP@R of
fp32 and INT8 (every image a query against all others), the share of queries whose
nearest neighbour is unchanged, the cosine between each image's fp32 and INT8
embeddings, and the file size. Timing lives in ``benchmarks/export_speed.py`` (it needs
a quiet machine); this needs none.

Writes ``benchmarks/results/int8_parity.{md,json}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from embdistill.data import load_dataset
from embdistill.checkpoints import checkpoint_normalization, embedder_from_checkpoint, load_checkpoint
from embdistill.engine.batches.loaders import eval_loader
from embdistill.export import export_checkpoint
from embdistill.quantize import DEFAULT_SETTINGS, parity_report

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (settings, why it is in the table)
VARIANTS = {
    "default": (DEFAULT_SETTINGS, "`embdistill export --quantize int8`: QDQ, U8U8, per-channel, percentile 99.999, all int8"),
    "U8S8": (DEFAULT_SETTINGS.with_(weight_type="int8"), "full-range int8 weights: saturates without VNNI (the default "
                                                         "before 2026-12-05, benchmarks/int8_cpu_paths.py)"),
    "U8S8 7-bit": (DEFAULT_SETTINGS.with_(weight_type="int8", reduce_range=True), "int8 weights in 7 bits (reduce_range): "
                                                                                  "exact and fast on every x86 path"),
    "MinMax calibration": (DEFAULT_SETTINGS.with_(calibration_method="minmax"), "ranges = calibration min/max"),
    "entropy calibration": (DEFAULT_SETTINGS.with_(calibration_method="entropy"), "KL-divergence ranges"),
    "percentile 99.99": (DEFAULT_SETTINGS.with_(percentile=99.99), "ranges clipped harder"),
    "S8S8 (first probe)": (DEFAULT_SETTINGS.with_(activation_type="int8", calibration_method="minmax"),
                           "signed activations, MinMax: quantize_static's defaults + per-channel, as the first probe ran"),
    "QOperator": (DEFAULT_SETTINGS.with_(format="qoperator"), "QLinearConv etc. instead of Q/DQ pairs"),
    "per-tensor weights": (DEFAULT_SETTINGS.with_(per_channel=False), "one scale per weight tensor"),
    "head kept fp32": (DEFAULT_SETTINGS.with_(keep_head_fp32=True), "pooling, linear head, normalisation in fp32"),
    "no pre-processing": (DEFAULT_SETTINGS.with_(preprocess=False), "without quant_pre_process"),
}


def embed(path: Path, batches: list[torch.Tensor], threads: int) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: b.numpy()})[0] for b in batches])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/dev13/student",
                        help="a run directory or checkpoint (MobileNetV2 96 px student); 'imagenet': the student's "
                             "starting point, ImageNet MobileNetV2 with a fresh seeded 512-d head, not fine-tuned")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--root", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "int8_parity")
    args = parser.parse_args(argv)
    command = shlex.join([os.path.relpath(sys.executable), "benchmarks/int8_parity.py", *(argv or sys.argv[1:])])
    torch.set_num_threads(args.threads)

    workdir = tempfile.TemporaryDirectory(prefix="int8_parity_")
    if args.checkpoint == "imagenet":
        from export_speed import CUB100, STUDENT, STUDENT_SIZE, write_checkpoint

        args.checkpoint = str(write_checkpoint(Path(workdir.name) / "imagenet" / "last.pt", STUDENT, STUDENT_SIZE,
                                               {"dataset": "cub200", "root": args.root or os.path.relpath(CUB100)}))
        label = "imagenet (ImageNet MobileNetV2 + fresh 512-d head, not fine-tuned)"
    else:
        label = str(Path(args.checkpoint))
    payload = load_checkpoint(args.checkpoint)
    data = payload["config"]["data"]
    root = args.root or data["root"]
    test = load_dataset(data["dataset"], root, "test")
    loader = eval_loader(test, payload["image_size"], checkpoint_normalization(payload), batch_size=128, num_workers=1,
                         resize=data.get("resize", "crop"))
    batches = [images for images, _, _ in loader]
    with torch.inference_mode():
        model = embedder_from_checkpoint(payload).eval()
        pytorch = np.concatenate([model(b).embedding.numpy() for b in batches])

    rows = []
    with workdir as tmp:
        fp32 = export_checkpoint(args.checkpoint, "onnx", Path(tmp) / "fp32.onnx", verify=False)
        reference = embed(fp32.path, batches, args.threads)
        fp32_vs_torch = float(np.abs(reference - pytorch).max())
        for name in args.variants:
            settings, why = VARIANTS[name]
            start = time.perf_counter()
            int8 = export_checkpoint(args.checkpoint, "onnx", Path(tmp) / f"{len(rows)}.onnx", verify=False,
                                     quantize="int8", quant_settings=settings)
            seconds = time.perf_counter() - start
            report = parity_report(reference, embed(int8.path, batches, args.threads), test.labels)
            row = {"variant": name, "why": why, "settings": settings.to_dict(), **report,
                   "fp32_mb": fp32.size_bytes / 2**20, "int8_mb": int8.size_bytes / 2**20,
                   "size_ratio": int8.size_bytes / fp32.size_bytes, "quantize_s": seconds,
                   "calibration": int8.quantization["calibration"]}
            rows.append(row)
            print(f"{name}: R@1 {row['fp32_recall@1']:.1f} -> {row['int8_recall@1']:.1f}, MAP@R {row['fp32_map@r']:.1f} -> "
                  f"{row['int8_map@r']:.1f}, top-1 unchanged {100 * row['top1_unchanged']:.1f}%, cosine "
                  f"{row['mean_cosine']:.4f} (min {row['min_cosine']:.4f}), {row['int8_mb']:.2f} MB", flush=True)

    meta = {
        "command": command,
        "checkpoint": label,
        "backbone": payload["model_config"].get("backbone"),
        "image_size": payload["image_size"],
        "embedding_dim": payload["model_config"].get("dim"),
        "test_images": len(test),
        "test_classes": test.num_classes,
        "fp32_onnx_vs_pytorch_max_abs_diff": fp32_vs_torch,
        "onnxruntime": ort.__version__,
        "cpu": platform.processor() or platform.machine(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(markdown(meta, rows))
    print(f"-> {args.out}.md, {args.out}.json")
    return 0


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# INT8 against fp32: retrieval on the cub100 test species",
        "",
        f"- command: `{meta['command']}`",
        f"- model: {meta['backbone']} at {meta['image_size']} px, {meta['embedding_dim']}-d, from `{meta['checkpoint']}`; "
        f"fp32 ONNX vs PyTorch max |diff| {meta['fp32_onnx_vs_pytorch_max_abs_diff']:.1e}",
        f"- queries: all {meta['test_images']} test images ({meta['test_classes']} unseen species), each against all others",
        f"- calibration: {rows[0]['calibration']}; onnxruntime {meta['onnxruntime']}; {meta['date']}",
        "- R@1, MAP@R in %; top-1 same = share of queries whose nearest neighbour is the same image under INT8; "
        "cosine = between an image's fp32 and INT8 embeddings",
        "",
        "| setting | R@1 fp32 → INT8 | MAP@R fp32 → INT8 | top-1 same | cosine mean (min) | INT8 MB (fp32 MB) | what differs |",
        "|---|---|---|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['fp32_recall@1']:.1f} → {r['int8_recall@1']:.1f} | {r['fp32_map@r']:.1f} → {r['int8_map@r']:.1f} | "
            f"{100 * r['top1_unchanged']:.1f}% | {r['mean_cosine']:.4f} ({r['min_cosine']:.3f}) | "
            f"{r['int8_mb']:.2f} ({r['fp32_mb']:.2f}, {100 * r['size_ratio']:.0f}%) | {r['why']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
