"""The paper's phone student on one GPU: ImageNet MobileNet-0.25 at 224 px, 20,000 steps a row, three rows at once.

What it runs, in order:

1. the teacher, EfficientNet-Lite0's ImageNet features at 224 px (``configs/cub100/strong/teacher.yaml``,
   not fine-tuned), scored on the 42 unseen species;
2. the teacher bank: the teacher run once over ``VIEWS`` fixed views of every training image;
3. a two-process ``torchrun`` smoke run of the relative-teacher student (NCCL when the machine has
   two GPUs; NCCL refuses two ranks on one GPU, so on a one-GPU machine the two ranks run gloo on the CPU);
4. three rows started together as processes on the one GPU: the student alone, + absolute teacher,
   + relative teacher. Each: MobileNetV1 width 0.25 from the Keras ImageNet weights, BatchNorm frozen,
   512-d, 224 px, P×K 4 × 8 batches (the paper's), Adam with one learning rate for every layer,
   bf16 autocast, channels-last, ``--steps`` optimiser steps, scored on the unseen species.

The three rows see the same images in the same order: ``VIEWS`` epochs, epoch v showing view v of every
image (the alone row's views are seeded by its seed, 0, the distilled rows' by ``distill.view_seed``, 0),
so the rows differ by their loss alone. Learning rate: the paper trains ~50k steps with Adam at 1e-5;
with 20k steps this uses 2.5e-5, constant like the paper's. Adam moves every weight by about the learning
rate each step, whatever the gradient's scale, so steps × rate bounds how far training takes the
weights from ImageNet; 20k × 2.5e-5 keeps the paper's 50k × 1e-5. The metric loss is multi-similarity,
not the paper's batch-hard triplet: on held-out cub100 species the triplet loss collapsed or eroded this
network (benchmarks/results/cub100_strong_tuning.md, "The paper's phone student"), multi-similarity did not;
the teacher terms are the strong benchmark's for its ImageNet student, read from its rows' recipes
(``configs/cub100/strong/rows/mobilenet025_imagenet/{absolute,relative}.yaml``).

On a GPU machine that gets only the repository, carry the data and the weights in a folder git ignores
(here ``carry/``; a Python there without pytorch-metric-learning needs it carried too, as a wheel; faiss
is not needed), then, from the repository root (``--results`` into a folder that comes back; ``PYTHONPATH=src``
where embdistill is not installed):

    PYTHONPATH=src python3 -m benchmarks.gpu_paper_student --data carry/cub100 --weights carry/mobilenet_2_5_224_tf_no_top.h5 \\
        --teacher-weights carry/efficientnet-lite0-57934424.pth --results "$OUT/gpu_paper_student.json"

    python -m benchmarks.gpu_paper_student --smoke --out /tmp/gpu_smoke   # all of it, tiny, on the CPU

Expected runtime on one H200 with 16 CPU cores: 5 to 10 minutes, most of it the rows, bound by their data
loaders (a 224-px crop costs 1.5-4 ms of a core on this project's CPU machine; 640k crops a row), not by
the GPU; ``--workers`` loader processes per row, (cores - 1) / 3 by default. Every phase writes the
JSON as it ends; run the same command again to continue after a stop: the teacher, the bank and finished
rows are reused, and an unfinished row continues from its last epoch checkpoint (every steps / VIEWS).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from embdistill.config import ConfigError, ExperimentConfig, load_config, read_yaml, to_dict
from embdistill.data.datasets import DatasetError
from embdistill.engine.teacher.bank import BankError, fill_bank_for_config
from embdistill.checkpoints import CheckpointError, load_checkpoint
from embdistill.engine.persist.rundir import finished_with, resume_checkpoint
from embdistill.models.weights import WeightsError

from benchmarks.common import KEYS, RESULTS, ROOT, SHARED, child_env, cub_subset, machine, repo_relative
from benchmarks.common.runs import run_cached

MODULE = "benchmarks.gpu_paper_student"
CONFIGS = ROOT / "configs" / "cub100" / "strong"
STUDENT_BASE = CONFIGS / "base.yaml"
TEACHER = CONFIGS / "teacher.yaml"
PAPER_STEPS = 20_000
VIEWS = 8  # fixed views per training image in the bank, and epochs per row
LR = 2.5e-5  # the paper's 1e-5 × 50k steps, spread over 20k (module docstring)
STUDENT = "MobileNet-0.25 (ImageNet)"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    terms: tuple = ()


def _terms(row: str) -> tuple:
    """The teacher terms of the strong benchmark's row ``row`` for its ImageNet MobileNet-0.25 (its recipe's)."""
    return tuple(read_yaml(CONFIGS / "rows" / "mobilenet025_imagenet" / f"{row}.yaml")["distill"]["terms"])


ROWS = (
    Row("alone", "metric loss alone"),
    Row("absolute", "+ absolute teacher", _terms("absolute")),
    Row("relative", "+ relative teacher", _terms("relative")),
)
# The bank's config needs a term to be a distillation config; which one does not change the bank.
BANK_TERMS = ({"name": "relative", "weight": 1.0, "args": {"reduction": "mean"}},)


@dataclass(frozen=True)
class Budget:
    """Sizes of one invocation: the paper's on a GPU, a handful of everything with ``--smoke``."""

    device: str
    image_size: int
    teacher_size: int
    steps: int
    views: int
    classes_per_batch: int
    images_per_class: int
    workers: int  # loader processes per row
    threads: int
    eval_batch: int
    log_every: int
    torchrun_steps: int

    @property
    def epochs(self) -> int:
        return self.views

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.steps / self.views)


def budget(args: argparse.Namespace) -> Budget:
    if args.smoke:
        return Budget(device="cpu", image_size=32, teacher_size=48, steps=3, views=1, classes_per_batch=2,
                      images_per_class=4, workers=1, threads=1, eval_batch=64, log_every=1, torchrun_steps=2)
    workers = args.workers or max(1, ((os.cpu_count() or 4) - 1) // len(ROWS))  # one core for the rows' main loops
    return Budget(device="cuda", image_size=224, teacher_size=224, steps=args.steps, views=VIEWS, classes_per_batch=4,
                  images_per_class=8, workers=workers, threads=2, eval_batch=256, log_every=100, torchrun_steps=10)


# ----------------------------------------------------------------------------- configs


def student_overrides(args: argparse.Namespace, b: Budget, data: Path) -> list[str]:
    pretrained = str(Path(args.weights).resolve()) if args.weights else "false"
    # Frozen BatchNorm keeps ImageNet's statistics. A random init (--smoke without --weights) has none: frozen,
    # its default statistics shrink every activation to 0 over 27 layers, and all images embed alike.
    frozen = "true" if args.weights else "false"
    return [
        f"output_dir={Path(args.out).resolve()}", f"data.root={data}", f"device={b.device}", f"threads={b.threads}",
        f"data.image_size={b.image_size}", "data.cache_images=true", f"data.num_workers={b.workers}",
        "model.backbone=mobilenet_v1", f"model.pretrained={pretrained}", "model.backbone_args={width: 0.25}",
        f"model.freeze_batchnorm={frozen}", "model.dim=512",
        f"train.classes_per_batch={b.classes_per_batch}", f"train.images_per_class={b.images_per_class}",
        f"train.epochs={b.epochs}", f"train.batches_per_epoch={b.batches_per_epoch}",
        f"train.lr={LR}", "train.backbone_lr_mult=1.0", "train.schedule=constant",
        "train.metric_loss=multi_similarity", "train.metric_loss_args={}",
        "train.precision=bf16", "train.channels_last=true", f"train.log_every={b.log_every}",
        f"eval.batch_size={b.eval_batch}",
    ]


def teacher_overrides(args: argparse.Namespace, b: Budget, data: Path, workers: int) -> list[str]:
    weights = [f"model.pretrained={Path(args.teacher_weights).resolve()}"] if args.teacher_weights else []
    return [f"output_dir={Path(args.out).resolve()}", f"name=teacher_lite0_{b.teacher_size}", f"data.root={data}",
            f"device={b.device}", f"data.image_size={b.teacher_size}", "train.epochs=0", "data.cache_images=false",
            f"data.num_workers={workers}", f"eval.batch_size={b.eval_batch}", *weights]


def distill_overrides(teacher: Path, b: Budget, bank: Path | None, terms: tuple) -> list[str]:
    return [f"distill.teacher={teacher}", f"distill.teacher_image_size={b.teacher_size}",
            f"distill.cache_views={b.views}", *([f"distill.bank={bank}"] if bank else []),
            "distill.terms=" + json.dumps(list(terms))]


def row_overrides(args: argparse.Namespace, b: Budget, data: Path, row: Row, teacher: Path, bank: Path) -> list[str]:
    o = [*student_overrides(args, b, data), f"name={row.key}", "seed=0"]
    return o + distill_overrides(teacher, b, bank, row.terms) if row.terms else o


def merged(overrides: list[str]) -> list[str]:
    """One ``key=value`` per key, the last given, in the order keys first appear: a readable command."""
    last: dict[str, str] = {}
    for item in overrides:
        last[item.partition("=")[0]] = item
    return list(last.values())


def plan(args: argparse.Namespace) -> list[tuple[Row, ExperimentConfig]]:
    """Each row with its checked config (nothing runs): what the GPU will train."""
    b, out = budget(args), Path(args.out).resolve()
    teacher, bank = _teacher_checkpoint(out, b), _bank_path(out, b)
    return [(r, load_config(STUDENT_BASE, row_overrides(args, b, Path(args.data).resolve(), r, teacher, bank)))
            for r in ROWS]


def _teacher_checkpoint(out: Path, b: Budget) -> Path:
    return out / f"teacher_lite0_{b.teacher_size}" / "last.pt"


def _bank_path(out: Path, b: Budget) -> Path:
    return out / "banks" / f"lite0_{b.teacher_size}_v{b.views}.bank"


# ----------------------------------------------------------------------------- processes


def _shown(argv: list[str]) -> str:
    """A command line as it is typed from the repository root: no machine-specific prefix."""
    return shlex.join(argv).replace(f"{ROOT}/", "")


def _env(b: Budget) -> dict[str, str]:
    return child_env(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(b.threads))


def _worker_argv(overrides: list[str], resume: bool = False) -> list[str]:
    return ["-m", MODULE, "--row", str(STUDENT_BASE), *overrides, *(["--resume"] if resume else [])]


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def _resumable(cfg: ExperimentConfig) -> bool:
    """A checkpoint of this very config to continue from (a stop mid-row)."""
    if not (cfg.run_dir / "last.pt").is_file():
        return False
    try:
        return resume_checkpoint(cfg) is not None
    except (ConfigError, CheckpointError):
        return False


def _run_summary(cfg: ExperimentConfig) -> dict:
    s = yaml.safe_load((cfg.run_dir / "summary.yaml").read_text())
    return {"seed": cfg.seed, "run_dir": str(cfg.run_dir), **{k: s[k] for k in KEYS},
            "steps": int(load_checkpoint(cfg.run_dir)["step"]), "train_seconds": s["train_seconds"],
            "images_per_s": s["train_images_per_s"], "teacher_forward_images": s["teacher_forward_images"],
            "embedding_spread": s.get("embedding_spread"),
            "collapse_warning": s.get("collapse_warning"), "processes": s.get("processes", 1)}


def run_rows(args: argparse.Namespace, b: Budget, data: Path, teacher: Path, bank: Path, ran: dict) -> list[dict]:
    """Start every unfinished row as its own process on the one device, wait for all, collect their results."""
    logs = Path(args.out).resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows, running = [], []
    for r in ROWS:
        overrides = row_overrides(args, b, data, r, teacher, bank)
        cfg = load_config(STUDENT_BASE, overrides)
        row = {"student": STUDENT, "method": r.key, "label": r.label, "seeds": "one", "config": to_dict(cfg),
               "command": _shown(["python", *_worker_argv(overrides)]), "ran": ran, "runs": []}
        rows.append(row)
        if finished_with(cfg):
            print(f"[gpu] reusing {cfg.run_dir}", flush=True)
            row["runs"].append({**_run_summary(cfg), "wall_seconds": None, "reused": True})
            continue
        resume = _resumable(cfg)
        argv = [sys.executable, *_worker_argv(overrides, resume)]
        log = logs / f"{r.key}.log"
        print(f"[gpu] starting {r.key}{' (resuming)' if resume else ''}: log {log}", flush=True)
        with log.open("w") as sink:
            process = subprocess.Popen(argv, cwd=ROOT, env=_env(b), stdout=sink, stderr=subprocess.STDOUT)
        running.append((row, cfg, process, log, time.perf_counter(), resume))
    try:
        for row, cfg, process, log, started, resume in running:
            code = process.wait()
            wall = round(time.perf_counter() - started, 1)
            if code != 0:
                row["error"] = f"exit code {code} after {wall} s; the end of {log}:\n{_tail(log)}"
                print(f"[gpu] {row['method']} FAILED ({code}); the end of {log}:\n{_tail(log)}", flush=True)
                continue
            row["runs"].append({**_run_summary(cfg), "wall_seconds": wall, "resumed": resume})
            print(f"[gpu] {row['method']}: R@1 {100 * row['runs'][0]['recall@1']:.1f} in {wall:.0f} s", flush=True)
    finally:  # interrupted: stop the rows this script started
        for _, _, process, _, _, _ in running:
            if process.poll() is None:
                process.terminate()
    return rows


def run_torchrun(args: argparse.Namespace, b: Budget, data: Path, teacher: Path) -> dict:
    """Two processes under torchrun training the relative-teacher student on a few species (live teacher)."""
    gpus = torch.cuda.device_count() if b.device == "cuda" else 0
    backend = "nccl" if gpus >= 2 else "gloo"
    device = "cuda" if backend == "nccl" else "cpu"
    overrides = merged([*student_overrides(args, b, data), "name=torchrun_relative", f"device={device}",
                        "train.epochs=1", f"train.batches_per_epoch={b.torchrun_steps}", "train.log_every=1",
                        *distill_overrides(teacher, b, None, _terms("relative")), "distill.cache_views=1"])
    cfg = load_config(STUDENT_BASE, overrides)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            *_worker_argv(overrides)]
    log = Path(args.out).resolve() / "logs" / "torchrun.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[gpu] torchrun, 2 processes, {backend}: log {log}", flush=True)
    started = time.perf_counter()
    with log.open("w") as sink:
        try:
            code = subprocess.run(argv, cwd=ROOT, env=_env(b), stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=args.torchrun_timeout).returncode
        except subprocess.TimeoutExpired:
            code = None
    result = {"backend": backend, "processes": 2, "device": device, "returncode": code,
              "seconds": round(time.perf_counter() - started, 1), "command": _shown(["python", *argv[1:]]),
              "config": to_dict(cfg)}
    if backend == "gloo" and b.device == "cuda":
        result["note"] = (f"{gpus} GPU(s): NCCL refuses two ranks on one GPU (NVIDIA/nccl#418), "
                          "so the two ranks ran gloo on the CPU")
    summary = cfg.run_dir / "summary.yaml"
    if code == 0 and summary.is_file():
        result.update(_run_summary(cfg))
    result["ok"] = bool(code == 0 and result.get("processes") == 2 and result.get("steps") == b.torchrun_steps)
    if not result["ok"]:
        result["error"] = f"exit code {code}; the end of {log}:\n{_tail(log)}"
    print(f"[gpu] torchrun {'ok' if result['ok'] else 'FAILED'} ({backend}, {result['seconds']:.0f} s)", flush=True)
    return result


# ----------------------------------------------------------------------------- the benchmark


def _machine() -> dict:
    cuda = torch.cuda.is_available()
    return {**machine(), "gpu": torch.cuda.get_device_name() if cuda else None,
            "gpu_count": torch.cuda.device_count() if cuda else 0, "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None}


def _command() -> str:
    return _shown(["python", "-m", MODULE, *sys.argv[1:]])


def _save(result: dict, args: argparse.Namespace) -> None:
    text = json.dumps(repo_relative(result), indent=1) + "\n"
    for path in {Path(args.out).resolve() / "gpu_paper_student.json", Path(args.results).resolve()}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _check_student_weights(cfg: ExperimentConfig) -> None:
    """Build the student once here, so that unreadable weights stop everything with one line, before the teacher runs."""
    from embdistill.models.embedder import create_embedder

    try:
        create_embedder(cfg.model)
    except (WeightsError, ValueError) as err:
        raise SystemExit(f"gpu_paper_student: --weights {cfg.model.pretrained}: {err}") from err


def run_benchmark(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    b, out = budget(args), Path(args.out).resolve()
    data = cub_subset(Path(args.data).resolve(), out, 4) if args.smoke else Path(args.data).resolve()
    _check_student_weights(plan(args)[0][1])
    machine = _machine()
    result: dict = {"command": _command(), "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "machine": machine,
                    "teacher_image_size": b.teacher_size, "student_image_size": b.image_size, "steps": b.steps,
                    "workers_per_row": b.workers}

    workers = min(b.workers * len(ROWS), os.cpu_count() or 1)  # the teacher and the bank run alone
    teacher_cfg = load_config(TEACHER, teacher_overrides(args, b, data, workers))
    s = run_cached(teacher_cfg)
    result["teacher"] = {"run_dir": str(teacher_cfg.run_dir), **{k: s[k] for k in KEYS}, "config": to_dict(teacher_cfg)}
    teacher = _teacher_checkpoint(out, b)

    bank = _bank_path(out, b)
    bank_cfg = load_config(STUDENT_BASE, merged([*student_overrides(args, b, data), "name=bank",
                                                 f"data.num_workers={workers}", *distill_overrides(teacher, b, bank, BANK_TERMS)]))
    filled, timing = time.perf_counter(), bank.with_suffix(".seconds.json")  # kept for a rerun that finds it filled
    existed = bank.is_file()
    fill_bank_for_config(bank_cfg, progress=False)  # before the rows start: they only read it
    if not existed:
        timing.write_text(json.dumps({"fill_seconds": round(time.perf_counter() - filled, 1)}) + "\n")
    seconds = json.loads(timing.read_text())["fill_seconds"] if timing.is_file() else None
    result["bank"] = {"path": str(bank), "views": b.views, "fill_seconds": seconds}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the rows get the GPU; this process keeps only its context
    print(f"[gpu] teacher R@1 {100 * s['recall@1']:.1f}; bank {bank} ready", flush=True)
    _save(result, args)

    torchrun_data = data if args.smoke else cub_subset(data, out, 4)
    result["torchrun"] = run_torchrun(args, b, torchrun_data, teacher)
    _save(result, args)

    rows_started = time.perf_counter()
    ran = {"command": result["command"], "date": result["date"], "gpu": machine["gpu"], "torch": machine["torch"]}
    result["rows"] = run_rows(args, b, data, teacher, bank, ran)
    ran["minutes"] = round((time.perf_counter() - rows_started) / 60, 1)  # the rows ran side by side
    result["minutes"] = round((time.perf_counter() - started) / 60, 1)
    _save(result, args)
    return result


def table(result: dict) -> str:
    t = result["teacher"]
    lines = [f"teacher (Lite0, {result['teacher_image_size']} px): R@1 {100 * t['recall@1']:.1f}, "
             f"MAP@R {100 * t['map@r']:.1f}; GPU {result['machine']['gpu']}; torch {result['machine']['torch']}", "",
             "| row | R@1 | R@2 | R@4 | R@8 | MAP@R | steps | train s | images/s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if not row["runs"]:
            lines.append(f"| {row['label']} | failed: {row['error'].splitlines()[0]} |")
            continue
        x = row["runs"][0]
        lines.append("| " + " | ".join([row["label"], *(f"{100 * x[k]:.1f}" for k in KEYS), str(x["steps"]),
                                         f"{x['train_seconds']:.0f}", f"{x['images_per_s']:.0f}"]) + " |")
    tr = result["torchrun"]
    lines += ["", f"torchrun, 2 processes, {tr['backend']}: {'ok' if tr['ok'] else 'FAILED'}"
              + (f", R@1 {100 * tr['recall@1']:.1f} after {tr['steps']} steps" if tr["ok"] else "")]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry points


def row_main(config: str, overrides: list[str], resume: bool) -> int:
    """One row, in its own process (also each torchrun rank): ``train.run`` without the CLI's run report,
    which needs faiss, absent on the GPU machine."""
    from embdistill.engine.compute.distributed import is_main
    from embdistill.engine.train import run

    result = run(load_config(config, overrides), progress=False, resume=resume)
    if is_main():
        print(json.dumps({"run_dir": str(result.run_dir), **result.metrics}))
    return 0


def check_args(args: argparse.Namespace) -> None:
    """One line naming the argument, the value and what was expected."""
    if not (Path(args.data) / "images.txt").is_file():
        raise SystemExit(f"gpu_paper_student: --data {args.data}: expected a CUB root with images.txt (cub100)")
    if args.weights and not Path(args.weights).is_file():
        raise SystemExit(f"gpu_paper_student: --weights {args.weights}: no such file")
    if not args.weights and not args.smoke:
        raise SystemExit("gpu_paper_student: --weights: expected the Keras MobileNet-0.25 ImageNet file "
                         "(mobilenet_2_5_224_tf_no_top.h5); only --smoke runs without it (random init)")
    if args.teacher_weights and not Path(args.teacher_weights).is_file():
        raise SystemExit(f"gpu_paper_student: --teacher-weights {args.teacher_weights}: no such file")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_paper_student: no CUDA device here: the full run is for a GPU machine; "
                         "--smoke runs all of it, tiny, on the CPU")
    if args.steps < 1:
        raise SystemExit(f"gpu_paper_student: --steps {args.steps}: expected a positive number of steps")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "data" / "cub100"), help="cub100 root")
    p.add_argument("--weights", help="the student's ImageNet weights: mobilenet_2_5_224_tf_no_top.h5")
    p.add_argument("--teacher-weights", help="EfficientNet-Lite0's ImageNet .pth (default: its pip package)")
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu_paper_student"), help="run directories, bank, logs")
    p.add_argument("--results", help="the JSON to commit (default: benchmarks/results/gpu_paper_student.json; "
                                     "with --smoke: OUT/gpu_paper_student.json)")
    p.add_argument("--steps", type=int, default=PAPER_STEPS, help="optimiser steps per row")
    p.add_argument("--workers", type=int, help="loader processes per row (default: (cores - 1) / 3)")
    p.add_argument("--torchrun-timeout", type=float, default=300.0, help="seconds before the torchrun part is given up")
    p.add_argument("--smoke", action="store_true", help="all of it on the CPU, 3 steps a row on 4 + 4 species: the plumbing")
    p.add_argument("--row", metavar="CONFIG", help=argparse.SUPPRESS)  # internal: run one row with CONFIG + overrides
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.row:
        return row_main(args.row, args.overrides, args.resume)
    if args.overrides:
        p.error(f"unexpected arguments {args.overrides}")
    args.results = args.results or str(Path(args.out) / "gpu_paper_student.json" if args.smoke
                                       else RESULTS / "gpu_paper_student.json")
    check_args(args)
    if not args.smoke and args.steps < PAPER_STEPS:
        print(f"[gpu] note: --steps {args.steps} is below the paper budget's {PAPER_STEPS}", flush=True)
    if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").total < 2**30:
        print("[gpu] note: /dev/shm is under 1 GiB; the rows' loader workers pass batches through it", flush=True)
    try:
        result = run_benchmark(args)
    except (ConfigError, DatasetError, CheckpointError, WeightsError, BankError) as err:
        raise SystemExit(f"gpu_paper_student: {' '.join(str(err).split())}") from err
    print(table(result))
    print(f"[gpu] {result['minutes']} min; results in {args.results}")
    ok = result["torchrun"]["ok"] and all(r["runs"] for r in result["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
