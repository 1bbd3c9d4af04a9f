"""Scale benchmark: exact retrieval metrics on an SOP-sized test split.

    python -m benchmarks.speed.eval_scale            # ~10 minutes on 2 cores
    python -m benchmarks.speed.eval_scale --render   # results/eval_scale.md again from its JSON (--name eval_scale_quiet: that one)
    python -m benchmarks.speed.eval_scale --smoke    # every task once on 2,000 items, to a temporary folder (or --out)

Times, each in a fresh subprocess so that peak RSS is per task:
  ours   embdistill.evaluation.retrieval_metrics: Recall@1/10/100/1000, MAP@R, R-Precision
  pml    pytorch-metric-learning AccuracyCalculator (precision_at_1, MAP@R, R-Precision,
         k="max_bin_count", the query set is its own reference, self excluded)
  floor  one 60,502 x 60,502 x 512 float32 product in blocks (torch.mm, results discarded)
  nmi    embdistill.evaluation.nmi_kmeans (faiss k-means, one cluster per class)
  idle   import torch, load the data and stop: the memory every task pays anyway

The data is synthetic and clustered (not SOP): 12 super-class directions, class centres
around them, items = centre + isotropic noise, L2-normalised; class sizes 2..12 with SOP's
count and mean; fixed seed. Results go to benchmarks/results/eval_scale.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, child_env, smoke_folder

N_ITEMS, N_CLASSES, DIM = 60_502, 11_316, 512
# --smoke: every task (NMI too) once, on SOP's mean class size (5.35) at 1/30 of its items: the plumbing, in seconds
SMOKE_ITEMS, SMOKE_CLASSES, SMOKE_NMI_NITER = 2_000, 374, 2
CLASS_SPREAD, NOISE = 0.8, 1.5
KS = (1, 10, 100, 1000)
TASKS = ("ours", "pml", "floor")


def class_sizes(n_items: int, n_classes: int, rng: np.random.Generator, lo: int = 2, hi: int = 12) -> np.ndarray:
    """Sizes in [lo, hi] summing to n_items, geometrically fewer large classes (like SOP)."""
    support = np.arange(lo, hi + 1)
    low, high = 1e-3, 1.0  # bisect the decay of P(size) that gives the target mean
    for _ in range(50):
        decay = 0.5 * (low + high)
        p = decay ** (support - lo)
        low, high = (decay, high) if (support * p).sum() / p.sum() < n_items / n_classes else (low, decay)
    sizes = rng.choice(support, n_classes, p=p / p.sum())
    while (diff := n_items - int(sizes.sum())) != 0:
        room = np.flatnonzero(sizes < hi) if diff > 0 else np.flatnonzero(sizes > lo)
        pick = rng.choice(room, min(abs(diff), len(room)), replace=False)
        sizes[pick] += np.sign(diff)
    return sizes


def make_data(seed: int, n_items: int = N_ITEMS, n_classes: int = N_CLASSES, dim: int = DIM,
              class_spread: float = CLASS_SPREAD, noise: float = NOISE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n_items, n_classes, rng)
    labels = np.repeat(np.arange(n_classes), sizes)
    rng.shuffle(labels)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    supers = unit(rng.standard_normal((12, dim)))
    centres = unit(supers[rng.integers(0, 12, n_classes)]
                   + class_spread * unit(rng.standard_normal((n_classes, dim))))
    x = centres[labels] + noise * unit(rng.standard_normal((n_items, dim)))
    return unit(x).astype(np.float32), labels.astype(np.int64)


# ----------------------------------------------------------------------------- workers
def worker(task: str, data: Path, threads: int, chunk: int, nmi_niter: int) -> dict:
    """Run one task in this (fresh) process; only the task itself is timed."""
    import resource

    import torch

    torch.set_num_threads(threads)
    x = torch.from_numpy(np.load(data / "x.npy"))
    y = torch.from_numpy(np.load(data / "y.npy"))
    torch.mm(x[:256], x[:256].T)  # wake the BLAS threads up before timing
    # Each task imports only what it uses, so that its peak RSS is its own.
    if task in ("pml", "nmi"):
        import faiss

        faiss.omp_set_num_threads(threads)
    if task == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                  k="max_bin_count", device=torch.device("cpu"))
    if task in ("ours", "nmi"):
        from embdistill.evaluation import nmi_kmeans, retrieval_metrics
    result: dict = {}

    start = time.perf_counter()
    if task == "ours":
        result = retrieval_metrics(x, y, ks=KS, chunk_size=chunk)
    elif task == "pml":
        result = calc.get_accuracy(x, y, ref_includes_query=True)
    elif task == "floor":
        out = torch.empty(chunk * chunk)
        for i0 in range(0, len(x), chunk):
            for j0 in range(0, len(x), chunk):
                a, b = x[i0 : i0 + chunk], x[j0 : j0 + chunk]
                torch.mm(a, b.T, out=out[: len(a) * len(b)].view(len(a), len(b)))
    elif task == "nmi":
        result = {"nmi": nmi_kmeans(x, y, seed=0, niter=nmi_niter)}
    seconds = time.perf_counter() - start
    return {"task": task, "seconds": seconds, "result": result,
            "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(task: str, data: Path, args: argparse.Namespace) -> dict:
    """Run a task in a fresh interpreter; its peak RSS comes from wait4() on that child alone."""
    cmd = [sys.executable, "-m", "benchmarks.speed.eval_scale", "--worker", task, "--data", str(data), "--threads", str(args.threads),
           "--chunk-size", str(args.chunk_size), "--nmi-niter", str(args.nmi_niter)]
    out_file = data / f"{task}.json"
    load_before = round(os.getloadavg()[0], 2)
    with open(data / f"{task}.log", "w") as log:
        proc = subprocess.Popen(cmd + ["--result", str(out_file)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{task} failed:\n{(data / f'{task}.log').read_text()[-3000:]}")
    record = json.loads(out_file.read_text())
    record["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    record["loadavg_1min_before"] = load_before
    print(f"  {task:6s} {record['seconds']:8.2f} s   peak RSS {record['peak_rss_mb']:7.0f} MB", flush=True)
    return record


# ----------------------------------------------------------------------------- report
def machine() -> dict:
    import faiss
    import pytorch_metric_learning
    import torch

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": cpu_model, "mem_total_gb": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_metric_learning": pytorch_metric_learning.__version__, "faiss": faiss.__version__,
            "numpy": np.__version__, "platform": platform.platform()}


def summarize(runs: dict[str, list[dict]], extra: dict[str, dict], meta: dict) -> dict:
    median = {task: statistics.median(r["seconds"] for r in runs[task]) for task in runs}
    ours, pml = runs["ours"][0]["result"], runs["pml"][0]["result"]
    return {
        **meta,
        "seconds_median": median,
        "seconds_all": {task: [r["seconds"] for r in runs[task]] for task in runs},
        "loadavg_1min_before_each": {task: [r["loadavg_1min_before"] for r in runs[task]] for task in runs},
        "peak_rss_mb": {task: max(r["peak_rss_mb"] for r in runs[task]) for task in runs}
        | {task: rec["peak_rss_mb"] for task, rec in extra.items()},
        "ratios": {"ours/pml": median["ours"] / median["pml"], "ours/floor": median["ours"] / median["floor"],
                   "pml/floor": median["pml"] / median["floor"]},
        "metrics": {"ours": ours, "pml": pml,
                    "nmi": extra["nmi"]["result"]["nmi"] if "nmi" in extra else None,
                    "abs_diff_vs_pml": {"recall@1 - precision_at_1": ours["recall@1"] - pml["precision_at_1"],
                                        "map@r": ours["map@r"] - pml["mean_average_precision_at_r"],
                                        "r_precision": ours["r_precision"] - pml["r_precision"]}},
        "nmi_seconds": extra["nmi"]["seconds"] if "nmi" in extra else None,
    }


def markdown(report: dict) -> str:
    s, rss, m = report["seconds_median"], report["peak_rss_mb"], report["machine"]
    rows = [
        ("ours: `retrieval_metrics` (R@1/10/100/1000, MAP@R, R-Precision)", "ours"),
        ("pml `AccuracyCalculator` (precision_at_1, MAP@R, R-Precision)", "pml"),
        (f"floor: {report['n_items']:,} x {report['n_items']:,} x {DIM} `torch.mm` in "
         f"{report['chunk_size']}-blocks, results discarded", "floor"),
    ]
    lines = [
        "# Evaluation at SOP scale",
        "",
        f"Generated on {report['date']} by:",
        "",
        f"    {report['command']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gb']} GB RAM, torch {m['torch']}, "
        f"pytorch-metric-learning {m['pytorch_metric_learning']}, faiss {m['faiss']}, "
        f"{report['threads']} torch/faiss threads. Load average before / after: "
        f"{report['loadavg_before']} / {report['loadavg_after']} (the machine is shared).",
        "",
        f"Data: {report['data']['description']}",
        "",
        f"Each task runs in a fresh process, {report['runs']} runs interleaved; time is the median "
        "(all runs in the JSON), peak RSS is the process's maximum resident set from wait4() "
        f"(a process that only imports torch and loads the data peaks at {rss['idle']:.0f} MB).",
        "",
        "| task | seconds (median) | peak RSS (MB) |",
        "|---|---:|---:|",
        *(f"| {label} | {s[key]:.1f} | {rss[key]:.0f} |" for label, key in rows),
    ]
    if report["nmi_seconds"] is not None:
        lines.append(f"| NMI: `nmi_kmeans`, faiss k-means, {report['n_classes']:,} clusters, "
                     f"niter={report['nmi_niter']}, 1 run | {report['nmi_seconds']:.1f} | {rss['nmi']:.0f} |")
    r, mt = report["ratios"], report["metrics"]
    lines += [
        "",
        f"Ratios: ours / pml = **{r['ours/pml']:.2f}**, ours / floor = {r['ours/floor']:.2f}, "
        f"pml / floor = {r['pml/floor']:.2f}.",
        "",
        "Values: ours " + ", ".join(f"{k} {v:.4f}" for k, v in mt["ours"].items())
        + "; pml " + ", ".join(f"{k} {v:.4f}" for k, v in mt["pml"].items())
        + (f"; NMI {mt['nmi']:.4f}" if mt["nmi"] is not None else "") + ".",
        "Differences ours - pml: " + ", ".join(f"{k} {v:+.2e}" for k, v in mt["abs_diff_vs_pml"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each timed task, interleaved")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=4096, help="block side for ours and the floor")
    parser.add_argument("--nmi-niter", type=int, default=20, help="k-means iterations (0: skip NMI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="the results' folder (default: benchmarks/results; --smoke: a temporary one)")
    parser.add_argument("--n-items", type=int, default=N_ITEMS, help="smaller for a smoke test")
    parser.add_argument("--n-classes", type=int, default=N_CLASSES)
    parser.add_argument("--name", default="eval_scale", help="the results' file name: --out/NAME.{json,md}")
    parser.add_argument("--render", action="store_true", help="no runs: --out/NAME.md again from --out/NAME.json")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE_ITEMS:,} items of {SMOKE_CLASSES} classes, 1 run, NMI at {SMOKE_NMI_NITER} iterations, "
                             "written to a temporary folder unless --out")
    parser.add_argument("--worker", choices=(*TASKS, "nmi", "idle"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        record = worker(args.worker, args.data, args.threads, args.chunk_size, args.nmi_niter)
        args.result.write_text(json.dumps(record))
        return
    if args.render:
        out = args.out or RESULTS
        (out / f"{args.name}.md").write_text(markdown(json.loads((out / f"{args.name}.json").read_text())))
        return
    if args.smoke:
        args.n_items, args.n_classes, args.runs = SMOKE_ITEMS, SMOKE_CLASSES, 1
        args.nmi_niter = min(args.nmi_niter, SMOKE_NMI_NITER)
        args.out = args.out or smoke_folder("eval_scale")
    args.out = args.out or RESULTS

    command = shlex.join([os.path.relpath(sys.executable), "-m", "benchmarks.speed.eval_scale", *sys.argv[1:]])
    loadavg_before = os.getloadavg()
    x, labels = make_data(args.seed, args.n_items, args.n_classes)
    sizes = np.bincount(labels)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        np.save(data / "x.npy", x)
        np.save(data / "y.npy", labels)
        del x
        print("idle / nmi / timed tasks, each in a fresh process:", flush=True)
        extra = {"idle": spawn("idle", data, args)}
        if args.nmi_niter > 0:
            extra["nmi"] = spawn("nmi", data, args)
        runs: dict[str, list[dict]] = {task: [] for task in TASKS}
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for task in TASKS:
                runs[task].append(spawn(task, data, args))

    meta = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "runs": args.runs,
        "chunk_size": args.chunk_size,
        "n_items": args.n_items,
        "n_classes": args.n_classes,
        "nmi_niter": args.nmi_niter,
        "loadavg_before": [round(v, 2) for v in loadavg_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "data": {
            "description": (
                f"synthetic, clustered (not SOP images): {args.n_items:,} x {DIM} float32, {args.n_classes:,} "
                f"classes of {sizes.min()}..{sizes.max()} items (mean {sizes.mean():.2f}), 12 super-class "
                f"directions, class centre = unit(super + {CLASS_SPREAD} * unit(random)), "
                f"item = unit(centre + {NOISE} * unit(random)), seed {args.seed}."
            ),
            "class_size_histogram": {int(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True))},
        },
    }
    report = summarize(runs, extra, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"-> {args.out / args.name}.md, .json", flush=True)


if __name__ == "__main__":
    main()
