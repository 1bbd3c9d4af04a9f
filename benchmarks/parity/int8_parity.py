"""INT8 against fp32 on the cub100 test species: does quantization change what the student retrieves?

    python -m benchmarks.parity.int8_parity --checkpoint runs/dev13/student
    python -m benchmarks.parity.int8_parity --render   # results/int8_parity.md again from its JSON (--out STEM: another)
    python -m benchmarks.parity.int8_parity --smoke    # 2 settings, the ImageNet student, 32 images, to a temporary folder

Exports the checkpoint to fp32 ONNX, then quantizes it once per setting in ``VARIANTS`` (``benchmarks/common/int8.py``)
(the first is ``embdistill export --quantize int8``'s default) with 256 calibration images
from the *training* species, and embeds every test image (the 42 unseen species) with
each model, all from the same preprocessed tensors. For each setting: R@1 and MAP@R of
fp32 and INT8 (every image a query against all others), the share of queries whose
nearest neighbour is unchanged, the cosine between each image's fp32 and INT8
embeddings, and the file size. Timing lives in ``benchmarks/speed/export_speed.py`` (it needs
a quiet machine); this needs none.

Writes ``benchmarks/results/int8_parity.{md,json}``. ``--smoke`` runs 2 settings of the ImageNet student on 4 test
species of cub100, 8 images each (calibrated on 4 train species' 32; as ``int8_cpu_paths --smoke``), and writes to a
temporary folder unless ``--out`` is given.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from embdistill.checkpoints import embedder_from_checkpoint
from embdistill.deploy.quantize import parity_report

from benchmarks.common import RESULTS
from benchmarks.common.int8 import VARIANTS, embed, export_int8, imagenet_student, render_table, smoke_args, test_inputs, write_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/dev13/student",
                        help="a run directory or checkpoint (MobileNetV2 96 px student); 'imagenet': the student's "
                             "starting point, ImageNet MobileNetV2 with a fresh seeded 512-d head, not fine-tuned")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="settings to compare (default: all)")
    parser.add_argument("--root", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--images", type=int, default=0, help="test images to embed, spread over the classes (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="results path without suffix (default: benchmarks/results/int8_parity)")
    parser.add_argument("--render", action="store_true", help="no runs: --out.md again from --out.json")
    parser.add_argument("--smoke", action="store_true", help="2 settings, the ImageNet student on 32 images of 4 test species: a quick check")
    args = parser.parse_args(argv)
    if args.render:
        render_table(args.out or RESULTS / "int8_parity", markdown)
        return 0
    if args.smoke:
        smoke_args(args, "int8_parity")
    args.out, args.variants = args.out or RESULTS / "int8_parity", args.variants or list(VARIANTS)
    command = shlex.join([os.path.relpath(sys.executable), "-m", "benchmarks.parity.int8_parity", *(argv or sys.argv[1:])])
    torch.set_num_threads(args.threads)

    workdir = tempfile.TemporaryDirectory(prefix="int8_parity_")
    if args.checkpoint == "imagenet":
        args.checkpoint = imagenet_student(Path(workdir.name), args.root)
        label = "imagenet (ImageNet MobileNetV2 + fresh 512-d head, not fine-tuned)"
    else:
        label = str(Path(args.checkpoint))
    payload, test, batches = test_inputs(args.checkpoint, args.root, images=args.images)
    with torch.inference_mode():
        model = embedder_from_checkpoint(payload).eval()
        pytorch = np.concatenate([model(b).embedding.numpy() for b in batches])

    rows = []
    with workdir as tmp:
        fp32, int8s = export_int8(args.checkpoint, Path(tmp), {name: VARIANTS[name][0] for name in args.variants})
        reference = embed(fp32.path, batches, args.threads)
        fp32_vs_torch = float(np.abs(reference - pytorch).max())
        for name, (int8, seconds) in int8s.items():
            settings, why = VARIANTS[name]
            report = parity_report(reference, embed(int8.path, batches, args.threads), test.labels)
            row = {"variant": name, "why": why, "settings": settings.to_dict(), **report,
                   "fp32_mb": fp32.size_bytes / 2**20, "int8_mb": int8.size_bytes / 2**20,
                   "size_ratio": int8.size_bytes / fp32.size_bytes, "quantize_s": seconds,
                   "calibration": int8.quantization["calibration"]}
            rows.append(row)
            print(f"{name}: R@1 {row['fp32_recall@1']:.1f} -> {row['int8_recall@1']:.1f}, MAP@R {row['fp32_map@r']:.1f} -> "
                  f"{row['int8_map@r']:.1f}, top-1 unchanged {100 * row['top1_unchanged']:.1f}%, cosine "
                  f"{row['mean_cosine']:.4f} (min {row['min_cosine']:.4f}), {row['int8_mb']:.2f} MB", flush=True)

    write_table(args.out, rows, markdown, command, label, payload, test, fp32_onnx_vs_pytorch_max_abs_diff=fp32_vs_torch,
                cpu=platform.processor() or platform.machine())
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
