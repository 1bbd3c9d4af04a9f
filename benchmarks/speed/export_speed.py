"""Exported model size and CPU speed: PyTorch eager vs ONNX Runtime vs TorchScript, and INT8.

    python -m benchmarks.speed.export_speed --spin     # on an idle machine
    python -m benchmarks.speed.export_speed --smoke    # both tables on tiny inputs, to a temporary folder (or --out)

Two tables, measured in one run:

**Runtimes.** 
For the paper's phone student (MobileNetV1 width 0.25) and EfficientNet-Lite0, at
image sizes 128 and 224: export with ``embdistill.deploy.export.export_checkpoint`` (as the
``embdistill export`` command does), then time a batch of 64 random normalised images
(throughput does not depend on the pixels) on ``--threads`` CPU threads. Each runtime
gets ``--warmup`` untimed runs, then the median of ``--repeats`` timed runs is reported.
The machine may be shared: the load average before and after is recorded next to the
numbers.

**INT8.** The demo's teacher (EfficientNet-Lite0, 128 px) in fp32, and its phone student
(MobileNetV2, 96 px, 512-d) in fp32 and in INT8 (``embdistill export --quantize int8``,
calibrated on 256 training images of ``--data``), all ONNX Runtime: file size, batch-1
latency (median of ``--latency-runs`` single-image runs, on 1 and on 2 threads) and
images/s at batch ``--batch`` on ``--threads`` threads. ``--student`` / ``--teacher`` take
trained checkpoints; by default both are their ImageNet weights with a fresh 512-d head
(speed and size do not depend on the fine-tuning). ``--int8-variants`` adds rows for
other quantization settings (names from ``VARIANTS`` in ``benchmarks/common/int8.py``, int8_parity's rows).

Results go to benchmarks/results/export_speed.md. ``--smoke`` runs every step of both tables once, at 64 px in
batches of 4, with one INT8 variant calibrated on a few cub100 species: its times mean nothing, it checks the
plumbing (exports, sessions, the Markdown).

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

from embdistill.deploy.cpu_features import cpu_int8
from embdistill.checkpoints import embedder_from_checkpoint, load_checkpoint
from embdistill.deploy.export import ExportResult, export_checkpoint
from embdistill.config import ModelConfig

from benchmarks.common import RESULTS, cub_subset, smoke_folder
from benchmarks.common.int8 import CUB100, STUDENT, STUDENT_SIZE, TEACHER, TEACHER_SIZE, VARIANTS, write_checkpoint

MODELS = {
    "MobileNet-0.25 (student)": ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.25}, dim=128),
    "EfficientNet-Lite0": ModelConfig(backbone="efficientnet_lite0", pretrained=True, dim=128),
}
# --smoke's settings (as command-line flags, so that its recorded command reads as any run's) and its calibration data:
# the first train and test species of --data, a few images each
SMOKE = {"sizes": [64], "batch": 4, "repeats": 1, "warmup": 1, "latency_runs": 2, "int8_variants": ["U8S8"]}
SMOKE_SPECIES, SMOKE_IMAGES = 4, 8


def int8_cpu_flags() -> list[str]:
    """The CPU's 8-bit dot-product extensions (VNNI, AMX: what makes U8S8 fast and exact on x86), read through CPUID."""
    return list(cpu_int8().features)


def cpu_model() -> str:
    return cpu_int8().model


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


def ort_session(path: Path, threads: int, spin: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def int8_models(args: argparse.Namespace, workdir: Path) -> list[tuple[str, ExportResult]]:
    """(row name, exported file): teacher fp32, student fp32, student INT8 (+ variants), all ONNX."""
    unknown = sorted(set(args.int8_variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--int8-variants: unknown {unknown}; known: {list(VARIANTS)}")
    data = {"dataset": "cub200", "root": str(args.data)}
    teacher = args.teacher or write_checkpoint(workdir / "teacher" / "last.pt", TEACHER, TEACHER_SIZE, data)
    student = args.student or write_checkpoint(workdir / "student" / "last.pt", STUDENT, STUDENT_SIZE, data)
    models = [
        ("teacher fp32", export_checkpoint(teacher, "onnx", workdir / "teacher.onnx", verify=False)),
        ("student fp32", export_checkpoint(student, "onnx", workdir / "student.onnx", verify=False)),
    ]
    for n, name in enumerate(["default", *args.int8_variants]):
        settings = VARIANTS[name][0]
        result = export_checkpoint(student, "onnx", workdir / f"student_int8_{n}.onnx", verify=False,
                                   quantize="int8", quant_settings=settings)
        models.append(("student INT8" if name == "default" else f"student INT8, {name}", result))
    return models


def bench_int8(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Batch-1 latency on 1 and 2 threads and batch throughput on ``--threads``, models timed in rotation."""
    models = int8_models(args, workdir)
    rows = {name: {"model": name, "mb": r.size_bytes / 2**20, "px": r.metadata.image_size,
                   "backbone": r.metadata.backbone} for name, r in models}
    generator = torch.Generator().manual_seed(0)
    for threads in sorted({1, 2}):
        sessions = {name: ort_session(r.path, threads, args.spin) for name, r in models}
        feeds = {name: {s.get_inputs()[0].name: torch.randn(1, 3, models[i][1].metadata.image_size,
                                                             models[i][1].metadata.image_size, generator=generator).numpy()}
                 for i, (name, s) in enumerate(sessions.items())}
        seconds = median_seconds({name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()},
                                 args.warmup * 10, args.latency_runs)
        for name, t in seconds.items():
            rows[name][f"latency_ms_{threads}t"] = 1000 * t
    sessions = {name: ort_session(r.path, args.threads, args.spin) for name, r in models}
    feeds = {name: {s.get_inputs()[0].name: torch.randn(args.batch, 3, models[i][1].metadata.image_size,
                                                         models[i][1].metadata.image_size, generator=generator).numpy()}
             for i, (name, s) in enumerate(sessions.items())}
    seconds = median_seconds({name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()},
                             args.warmup, args.repeats)
    for name, t in seconds.items():
        rows[name]["images_per_s"] = args.batch / t
    fp32 = rows["student fp32"]
    for row in rows.values():
        print(f"{row['model']}: {row['mb']:.2f} MB, batch 1 {row['latency_ms_1t']:.2f} ms (1 thread) "
              f"{row['latency_ms_2t']:.2f} ms (2 threads), {row['images_per_s']:.0f} img/s", flush=True)
    for row in rows.values():
        row["size_vs_student_fp32"] = row["mb"] / fp32["mb"]
    return list(rows.values())


def int8_markdown(rows: list[dict], args: argparse.Namespace) -> list[str]:
    fp32 = next(r for r in rows if r["model"] == "student fp32")
    lines = [
        "",
        "## INT8: teacher fp32, student fp32, student INT8 (ONNX Runtime)",
        "",
        f"- teacher: EfficientNet-Lite0 at {TEACHER_SIZE} px; student: MobileNetV2 at {STUDENT_SIZE} px; both 512-d "
        f"({'trained checkpoints ' + str(args.student) + ', ' + str(args.teacher) if args.student else 'ImageNet weights with a fresh 512-d head: speed and size do not depend on fine-tuning'})",
        "- INT8 = `embdistill export --quantize int8` (defaults in `embdistill.deploy.quantize.DEFAULT_SETTINGS`, "
        f"accuracy in [int8_parity.md](int8_parity.md)), calibrated on 256 training images of {args.data.name}",
        f"- batch-1 latency: median of {args.latency_runs} single-image runs per model after {args.warmup * 10} "
        "warm-up runs, models in rotation, intra-op threads 1 and 2; "
        f"images/s: batch {args.batch}, {args.threads} threads, median of {args.repeats} runs",
        "",
        "| model | px | file MB | % of student fp32 | batch-1 ms, 1 thread | batch-1 ms, 2 threads | img/s (batch "
        f"{args.batch}, {args.threads} threads) | INT8 / fp32 speed (1 thread, 2 threads, batch) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    slower = []
    for r in rows:
        speed = "-"
        if r["model"].startswith("student INT8"):
            ratios = {"batch 1, 1 thread": fp32["latency_ms_1t"] / r["latency_ms_1t"],
                      "batch 1, 2 threads": fp32["latency_ms_2t"] / r["latency_ms_2t"],
                      f"batch {args.batch}": r["images_per_s"] / fp32["images_per_s"]}
            speed = ", ".join(f"{v:.2f}x" for v in ratios.values())
            slower += [f"{r['model']} at {where} ({v:.2f}x)" for where, v in ratios.items() if v < 1.0]
        lines.append(
            f"| {r['model']} | {r['px']} | {r['mb']:.2f} | {100 * r['size_vs_student_fp32']:.0f}% | "
            f"{r['latency_ms_1t']:.2f} | {r['latency_ms_2t']:.2f} | {r['images_per_s']:.0f} | {speed} |"
        )
    lines += [
        "",
        f"- CPU integer features (CPUID): {', '.join(int8_cpu_flags()) or 'none found'}; kernel path: "
        f"{cpu_int8().int8_path} (the default INT8 has uint8 weights, exact on every path: benchmarks/parity/int8_cpu_paths.py).",
        "- INT8 slower than fp32 in: " + ("; ".join(slower) if slower else "nothing measured here (faster everywhere)") + ".",
    ]
    return lines


def markdown(rows: list[dict], args: argparse.Namespace, load_before: tuple, load_after: tuple, command: str) -> str:
    lines = [
        "# Exported embedder: size on disk and CPU speed",
        "",
        f"- command: `{command}`",
        f"- machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; {platform.system()} {platform.release()}",
        f"- torch {torch.__version__} (eager and TorchScript), onnxruntime {ort.__version__} (CPUExecutionProvider), "
        f"numpy {np.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        "- thread pools: " + ("library defaults (spinning)" if args.spin else
        f"no spinning (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, ORT allow_spinning=0), "
        "since other jobs share the cores"),
        f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)} (other work on the machine competes for the cores)",
    ]
    if not rows:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Runtimes: PyTorch eager, ONNX Runtime, TorchScript (fp32)",
        "",
        f"- batch {args.batch}, {args.threads} threads (torch.set_num_threads / ORT intra_op_num_threads, inter_op 1), "
        f"fp32, random normalised input; {args.warmup} warm-up runs, then the median of {args.repeats} runs "
        "(the three runtimes timed in rotation)",
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
    parser.add_argument("--latency-runs", type=int, default=500, help="INT8 table: timed single-image runs per model and thread count")
    parser.add_argument("--spin", action="store_true", help="let thread pools spin (library defaults): a dedicated machine")
    parser.add_argument("--tables", nargs="+", choices=["runtimes", "int8"], default=["runtimes", "int8"])
    parser.add_argument("--student", type=Path, help="INT8 table: a trained student checkpoint (default: ImageNet MobileNetV2)")
    parser.add_argument("--teacher", type=Path, help="INT8 table: a trained teacher checkpoint (default: ImageNet Lite0)")
    parser.add_argument("--data", type=Path, default=CUB100, help="CUB root whose training images calibrate the INT8 student")
    parser.add_argument("--int8-variants", nargs="*", default=[], help="extra INT8 rows, by name in VARIANTS (benchmarks/common/int8.py)")
    parser.add_argument("--out", type=Path, help="the Markdown (default: benchmarks/results/export_speed.md; --smoke: in a "
                                                 "temporary folder)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"every step once on tiny inputs ({SMOKE}), calibrated on {SMOKE_IMAGES} images of "
                             f"{SMOKE_SPECIES} species: the plumbing, not a timing")
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
        args.out = args.out or smoke_folder("export_speed") / "export_speed.md"
        args.data = cub_subset(args.data, args.out.parent, SMOKE_SPECIES, SMOKE_IMAGES)
    args.out = args.out or RESULTS / "export_speed.md"
    command = shlex.join([os.path.relpath(sys.executable), "-m", "benchmarks.speed.export_speed", *(argv or sys.argv[1:])])
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows, int8_rows = [], []
    with tempfile.TemporaryDirectory(prefix="export_speed_") as tmp:
        if "runtimes" in args.tables:
            rows = [bench_one(name, config, size, args, Path(tmp)) for name, config in MODELS.items() for size in args.sizes]
        if "int8" in args.tables:
            int8_rows = bench_int8(args, Path(tmp))
    text = markdown(rows, args, load_before, os.getloadavg(), command)
    if int8_rows:
        text += "\n".join(int8_markdown(int8_rows, args)) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"-> {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
