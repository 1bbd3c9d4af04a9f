"""INT8 settings on every x86 integer-kernel path, measured on one machine: which default is right on every CPU?

    python -m benchmarks.parity.int8_cpu_paths --checkpoint runs/demo/distilled
    python -m benchmarks.parity.int8_cpu_paths --render   # results/int8_cpu_paths.md again from its JSON (--out STEM: another)

ONNX Runtime picks its INT8 kernels from the CPU it runs on (``embdistill.deploy.cpu_features``):
with VNNI or AMX, uint8 x int8 (U8S8) products are summed in 32 bits; on x86 without them,
each pair of products is first added in a saturating 16-bit lane. So one INT8 file can be
right on the machine that made it and wrong on another. This script quantizes the checkpoint
once per setting in ``VARIANTS`` (256 training images, as ``embdistill export --quantize int8``),
then embeds the test split with every file on every path in ``PATHS``:

- ``native``: this CPU, as it is;
- ``avx2-no-vnni``: the same program under ``qemu-x86_64 -cpu Haswell`` (Debian's ``qemu-user``),
  whose CPUID says AVX2 without VNNI, so ONNX Runtime takes the saturating kernels, exactly as on
  such a machine (its arithmetic is emulated bit for bit; only the speed is not real);
- ``avx2-no-vnni+precise``: as above with ONNX Runtime's ``session.x64quantprecision=1``, which
  turns int8 weights into uint8 at load time (what ``embdistill`` does for older files there).

Every embedding is compared with the fp32 ONNX model's on this CPU (float kernels do not saturate):
R@1 and MAP@R on the test classes (every image a query against all others), the cosine between
each image's fp32 and INT8 embeddings, and the file size. Speed is in ``benchmarks/speed/export_speed.py``
(it needs a quiet machine and a real CPU, not an emulated one).

Writes ``benchmarks/results/int8_cpu_paths.{md,json}``. ``--smoke`` runs 2 settings of the ImageNet student on 4
test species of cub100, 8 images each (calibrated on 4 train species' 32), and writes to a temporary folder unless
``--out`` is given. ``tests/test_int8_cpus.py``
runs the ``--child`` mode under the emulator on a worst-case convolution.
The child runs as ``python -m benchmarks.parity.int8_cpu_paths --child`` and imports only numpy, ONNX Runtime and
``embdistill.deploy.cpu_features``: this module imports everything else inside its functions.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, child_env

QEMU = "qemu-x86_64"
# path name -> (CPU that qemu emulates or None for this CPU, ONNX Runtime session config)
PATHS = {
    "native": (None, {}),
    "avx2-no-vnni": ("Haswell", {}),
    "avx2-no-vnni+precise": ("Haswell", {"session.x64quantprecision": "1"}),
}


def variants() -> dict:
    from embdistill.deploy.quantize import DEFAULT_SETTINGS, QuantSettings

    u8s8 = QuantSettings(activation_type="uint8", weight_type="int8", reduce_range=False)
    return {
        "default": (DEFAULT_SETTINGS, "`embdistill export --quantize int8`"),
        "U8S8": (u8s8, "uint8 activations x int8 weights in full range (the default before 2026-12-05)"),
        "U8S8 7-bit": (u8s8.with_(reduce_range=True), "int8 weights in 7 bits (reduce_range): pair sums below 2^15"),
        "S8S8": (u8s8.with_(activation_type="int8"), "signed activations (x86 shifts them to uint8)"),
    }


def embed_child(models: list[Path], inputs: Path, out_dir: Path, config: dict[str, str], threads: int) -> None:
    """Run each model on the saved input tensor; runs inside the emulator too, so it imports only numpy and ORT."""
    import onnxruntime as ort

    x = np.load(inputs, mmap_mode="r")
    for model in models:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        out = np.concatenate([session.run(None, {name: np.ascontiguousarray(x[i:i + 64])})[0] for i in range(0, len(x), 64)])
        np.save(out_dir / f"{model.stem}.npy", out)


def run_path(path: str, models: list[Path], inputs: Path, workdir: Path, threads: int) -> tuple[Path, dict]:
    """Embeddings of every model on one kernel path, and the CPU that path reported."""
    cpu, config = PATHS[path]
    out = workdir / path
    out.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "benchmarks.parity.int8_cpu_paths", "--child", str(inputs), str(out), json.dumps(config),
               str(threads), *map(str, models)]
    if cpu is not None:
        if shutil.which(QEMU) is None:
            raise SystemExit(f"path {path} needs {QEMU} (Debian: apt-get install qemu-user)")
        command = [QEMU, "-cpu", cpu, *command]
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL if cpu else None, cwd=ROOT, env=child_env())
    return out, json.loads((out / "cpu.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/demo/distilled",
                        help="a run directory or checkpoint; 'imagenet': ImageNet MobileNetV2 with a fresh 512-d head at 96 px")
    parser.add_argument("--root", help="dataset root (default: the checkpoint's)")
    parser.add_argument("--images", type=int, default=0, help="test images to embed, spread over the classes (0: all)")
    parser.add_argument("--variants", nargs="+", help="settings to compare (default: all)")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true",
                        help="2 settings, the ImageNet student on 32 images of 4 test species: a quick check")
    parser.add_argument("--out", type=Path, help="results path without suffix (default: benchmarks/results/int8_cpu_paths)")
    parser.add_argument("--render", action="store_true", help="no runs: --out.md again from --out.json")
    args = parser.parse_args(argv)
    if args.render:
        from benchmarks.common.int8 import render_table

        render_table(args.out or RESULTS / "int8_cpu_paths", markdown)
        return 0
    if args.smoke:
        from benchmarks.common.int8 import smoke_args  # not at the top: the --child under qemu must not import torch

        smoke_args(args, "int8_cpu_paths")
    args.out = args.out or RESULTS / "int8_cpu_paths"
    return measure(args, shlex.join([os.path.relpath(sys.executable), "-m", "benchmarks.parity.int8_cpu_paths", *(argv or sys.argv[1:])]))


def measure(args: argparse.Namespace, command: str) -> int:
    import torch

    from embdistill.deploy.quantize import parity_report

    from benchmarks.common.int8 import export_int8, imagenet_student, test_inputs, write_table

    table = variants()
    chosen = args.variants or list(table)
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {list(table)}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="int8_cpu_paths_") as tmp:
        workdir = Path(tmp)
        checkpoint = imagenet_student(workdir, args.root) if args.checkpoint == "imagenet" else args.checkpoint
        payload, test, batches = test_inputs(checkpoint, args.root, images=args.images, num_workers=0)
        inputs = workdir / "inputs.npy"
        np.save(inputs, np.concatenate([images.numpy() for images in batches]))

        fp32, int8s = export_int8(checkpoint, workdir, {name: table[name][0] for name in chosen}, log="int8_cpu_paths")
        models = [fp32, *(result for result, _ in int8s.values())]
        files = [m.path for m in models]

        reference, native = None, {}
        rows, cpus = [], {}
        for path in args.paths:
            start = time.perf_counter()
            out, cpus[path] = run_path(path, files if reference is None else files[1:], inputs, workdir, args.threads)
            print(f"[int8_cpu_paths] {path} ({cpus[path]['int8_path']}): {time.perf_counter() - start:.0f} s", flush=True)
            if reference is None:
                reference = np.load(out / "fp32.npy")
            for n, name in enumerate(chosen, start=1):
                got = np.load(out / f"int8_{n - 1}.npy")
                report = parity_report(reference, got, test.labels)
                # the same file on the native CPU: 0 where both paths sum exactly (no saturation anywhere)
                native.setdefault(name, got)
                row = {"variant": name, "path": path, "why": table[name][1], "settings": table[name][0].to_dict(),
                       "int8_mb": models[n].size_bytes / 2**20, "fp32_mb": models[0].size_bytes / 2**20, **report,
                       "max_abs_diff_vs_first_path": float(np.abs(got - native[name]).max())}
                rows.append(row)
                print(f"  {name}: R@1 {row['fp32_recall@1']:.1f} -> {row['int8_recall@1']:.1f}, MAP@R "
                      f"{row['fp32_map@r']:.1f} -> {row['int8_map@r']:.1f}, cosine {row['mean_cosine']:.4f} "
                      f"(min {row['min_cosine']:.4f})", flush=True)

    write_table(args.out, rows, markdown, command, args.checkpoint, payload, test,
                calibration=models[1].quantization["calibration"], cpus=cpus)
    return 0


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# INT8 on every x86 kernel path: retrieval against fp32",
        "",
        f"- command: `{meta['command']}`",
        *([f"- {meta['note']}"] if meta.get("note") else []),  # a hand-written word on a committed run
        f"- model: {meta['backbone']} at {meta['image_size']} px, {meta['embedding_dim']}-d, from `{meta['checkpoint']}`",
        f"- queries: {meta['test_images']} test images ({meta['test_classes']} unseen classes), each against all others; "
        f"reference: the fp32 ONNX model on the native CPU",
        f"- calibration: {meta['calibration']}; onnxruntime {meta['onnxruntime']}; {meta['date']}",
        "- paths (the CPU each reported through CPUID):",
        *(f"  - `{path}`: {cpu['model']}, {cpu['int8_path']}"
          + (f", session config {PATHS[path][1]}" if PATHS[path][1] else "") for path, cpu in meta["cpus"].items()),
        "- R@1, MAP@R in %; cosine = between an image's fp32 and INT8 embeddings",
        "",
        f"- max diff: largest |difference| between this path's INT8 embeddings and the same file's on `{rows[0]['path']}`",
        "",
        "| setting | path | R@1 fp32 → INT8 | MAP@R fp32 → INT8 | cosine mean | cosine min | max diff | INT8 MB | what it is |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['path']} | {r['fp32_recall@1']:.1f} → {r['int8_recall@1']:.1f} | "
            f"{r['fp32_map@r']:.1f} → {r['int8_map@r']:.1f} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
            f"{r['max_abs_diff_vs_first_path']:.1e} | "
            f"{r['int8_mb']:.2f} | {r['why']} |"
        )
    return "\n".join(lines) + "\n"


def child(argv: list[str]) -> int:
    inputs, out, config, threads, *models = argv
    from embdistill.deploy.cpu_features import cpu_int8  # this checkout's: run_path puts its src first on PYTHONPATH

    Path(out, "cpu.json").write_text(json.dumps(cpu_int8().to_dict()))
    embed_child([Path(m) for m in models], Path(inputs), Path(out), json.loads(config), int(threads))
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[2:]) if sys.argv[1:2] == ["--child"] else main())
