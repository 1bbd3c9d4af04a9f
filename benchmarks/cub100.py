"""The paper's experiment table, reproduced on real birds on a 2-core CPU.

One EfficientNet-Lite2 teacher (ImageNet weights, fine-tuned), two students
(MobileNet-0.25 from random init; MobileNetV2 from ImageNet weights), and for each
student a row per method: metric loss alone, + absolute teacher, + relative teacher,
+ RKD, + DarkRank, + hint, + attention, relative + semi-supervised, and cross-quality.
Every run is an ordinary ``embdistill`` run built from ``configs/cub100/benchmark``;
this script only lists the rows, runs them and tabulates the results:

    .venv/bin/python benchmarks/cub100.py            # ~90 min on 2 CPU cores
    .venv/bin/python benchmarks/cub100.py --smoke    # every row, tiny, ~3 min: checks the plumbing
    .venv/bin/python benchmarks/cub100.py --render   # table and plots again from results/cub100.json

Writes ``benchmarks/results/cub100.{json,md}`` and two plots in ``docs/``. Finished
runs (same config, ``summary.yaml`` present) are reused, so an interrupted benchmark
continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from embdistill.config import ExperimentConfig, load_config, to_dict
from embdistill.plots import plot_training_curves
from embdistill.report import write_run_report

from bench_common import Row, machine, repo_relative, run_cached  # benchmarks/bench_common.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "cub100" / "benchmark"
KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")
CQ_RESOLUTION_DIVISOR = 4  # cross-quality: the student sees a quarter of the teacher's resolution


@dataclass(frozen=True)
class Student:
    name: str
    config: str
    absolute_weight: float
    relative_weight: float
    cache_views: int


STUDENTS = (
    # lambdas for the scratch student chosen on held-out train classes (results/cub100_tuning.md);
    # MobileNetV2's are the demo's (configs/cub100/student_*.yaml).
    Student("MobileNet-0.25 (scratch)", "mobilenet025.yaml", absolute_weight=10.0, relative_weight=10.0, cache_views=2),  # 8 epochs: each teacher view reused 4 times
    Student("MobileNetV2 (ImageNet)", "mobilenet_v2.yaml", absolute_weight=1.0, relative_weight=1.0, cache_views=1),
)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    seeds: str  # "all" (mean ± std over --seeds) or "one" (the first seed)
    terms: tuple = ()
    extra: tuple = ()  # further overrides
    cross_quality: bool = False
    compare_to: str = "baseline"  # the row its "gap closed" is measured from


def methods(s: Student) -> list[Method]:
    rel = {"name": "relative", "weight": s.relative_weight, "args": {"reduction": "mean"}}
    return [
        Method("baseline", "metric loss alone", "all"),
        Method("absolute", "+ absolute teacher", "all", ({"name": "absolute", "weight": s.absolute_weight},)),
        Method("relative", "+ relative teacher", "all", (rel,)),
        Method("rkd", "+ RKD distance & angle", "one",
               ({"name": "rkd_distance", "weight": 25.0}, {"name": "rkd_angle", "weight": 50.0})),
        Method("darkrank", "+ DarkRank (soft)", "one", ({"name": "darkrank", "weight": 1.0, "args": {"method": "listnet"}},)),
        Method("hint", "+ hint (stage3)", "one",
               ({"name": "hint", "weight": 1.0, "args": {"student_layer": "stage3", "teacher_layer": "stage3"}},)),
        Method("attention", "+ attention (stages 2-4)", "one",
               ({"name": "attention", "weight": 10.0,
                 "args": {"student_layers": ["stage2", "stage3", "stage4"], "teacher_layers": ["stage2", "stage3", "stage4"]}},)),
        Method("semi", "+ relative, semi-supervised", "one", (rel,),
               ("distill.semi_supervised.hide_label_fraction=0.5", "distill.semi_supervised.unlabelled_per_batch=16")),
        Method("cq_baseline", "low-res student alone", "one", cross_quality=True, compare_to="cq_baseline"),
        Method("cq_relative", "low-res student + relative teacher", "one", (rel,), cross_quality=True, compare_to="cq_baseline"),
    ]


def _run_cached(cfg: ExperimentConfig) -> dict:
    """Run ``cfg`` (and write its report) unless the same config already finished in its run directory."""
    summary = run_cached(cfg, after_run=lambda c: write_run_report(c.run_dir, device=c.device))  # stats.json, plots
    stats = json.loads((cfg.run_dir / "stats.json").read_text())
    return {
        "seed": cfg.seed,
        "run_dir": str(cfg.run_dir),
        **{k: summary[k] for k in KEYS},
        "train_seconds": summary["train_seconds"],
        "teacher_forward_images": summary["teacher_forward_images"],
        "parameters": stats["parameters"],
        "mflops": stats["mult_adds_millions"],
        "cpu_images_per_s": stats["cpu_images_per_s"],
        "initial": summary.get("initial"),
    }


def _base_overrides(args: argparse.Namespace) -> list[str]:
    o = [f"output_dir={args.output}", f"data.root={Path(args.data).resolve()}"]
    if args.smoke:
        o += ["data.image_size=32", "train.epochs=1", "train.batches_per_epoch=2", "eval.initial=false"]
    return o


def run_benchmark(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    base = _base_overrides(args)
    teacher_cfg = load_config(CONFIGS / "teacher.yaml", base)
    teacher = _run_cached(teacher_cfg)
    teacher_ckpt = teacher_cfg.run_dir / "last.pt"
    teacher_size = teacher_cfg.data.image_size
    rows: dict[tuple[str, str], Row] = {}
    for s in reversed(STUDENTS):  # the quick pretrained student first: its rows land early
        for m in methods(s):
            row = rows[s.name, m.key] = Row(s.name, m)
            seeds = args.seeds if m.seeds == "all" else args.seeds[:1]
            for seed in seeds:
                o = base + [f"seed={seed}", f"name={Path(s.config).stem}/{m.key}/seed{seed}"]
                if m.terms:
                    o += [f"distill.teacher={teacher_ckpt}", f"distill.cache_views={s.cache_views}",
                          f"distill.teacher_image_size={teacher_size}",
                          "distill.terms=" + json.dumps(list(m.terms)), *m.extra]
                if m.cross_quality:
                    o += [f"distill.cross_quality.resolution={max(1, teacher_size // CQ_RESOLUTION_DIVISOR)}"]
                if m.key == "relative" and seed == seeds[0] and s is STUDENTS[0] and not args.smoke:
                    o += ["eval.every_epochs=2"]  # the training-curve plot's run
                cfg = load_config(CONFIGS / s.config, o)
                row.config = row.config or to_dict(cfg)
                row.runs.append(_run_cached(cfg))
    ordered = [rows[s.name, m.key] for s in STUDENTS for m in methods(s)]
    return {
        "command": "python benchmarks/cub100.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "seeds": args.seeds,
        "teacher_image_size": teacher_size,
        "student_image_size": ordered[0].config["data"]["image_size"],
        "teacher": {**teacher, "config": to_dict(teacher_cfg)},
        "rows": [{"student": r.student, "method": r.method.key, "label": r.method.label, "seeds": r.method.seeds,
                  "compare_to": r.method.compare_to, "runs": r.runs, "config": r.config} for r in ordered],
    }


# ----------------------------------------------------------------------------- tables and plots


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: list[float]) -> str:
    mean, std = _mean_std([100 * v for v in values])
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def gap_closed(student: float, baseline: float, teacher: float) -> float | None:
    """(student − baseline) / (teacher − baseline) on R@1; None when the teacher is not above the baseline."""
    return (student - baseline) / (teacher - baseline) if teacher > baseline else None


def markdown(result: dict) -> str:
    t = result["teacher"]
    tc = t["config"]
    teacher_r1 = t["recall@1"]
    first = result["rows"][0]["config"]
    lines = [
        f"# cub100 benchmark: {len(result['rows'])} rows, {result['minutes']} min",
        "",
        f"`{result['command']}` on {result['machine']['processor']} ({result['machine']['cpu_count']} CPUs), "
        f"{result['machine']['platform']}.",
        f"Teacher input {result['teacher_image_size']} px; students {result['student_image_size']} px, "
        "distilled students seeing the teacher's crop resized (`distill.teacher_image_size`); P×K batches "
        f"{first['train']['classes_per_batch']}×{first['train']['images_per_class']}; Adam, cosine schedule. "
        "Train: 58 species (3,428 images); test: the 42 unseen species (2,474 images), every image a query.",
        f"Teacher: EfficientNet-Lite2 (ImageNet), {tc['train']['epochs']} epoch(s) at lr {tc['train']['lr']:g}, "
        "frozen BatchNorm: "
        + (f"R@1 {100 * t['initial']['recall@1']:.1f} → {100 * teacher_r1:.1f}, MAP@R {100 * t['initial']['map@r']:.1f} → "
           if t.get("initial") else f"R@1 {100 * teacher_r1:.1f}, MAP@R ")
        + f"{100 * t['map@r']:.1f}; {t['parameters'] / 1e6:.2f} M parameters, {t['mflops']:.0f} MFLOPs, "
        f"{t['cpu_images_per_s']:.0f} img/s.",
        f"Rows marked * are the mean ± std over seeds {', '.join(map(str, result['seeds']))}; the others are one run "
        f"(seed {result['seeds'][0]}). Distilled rows use the teacher-output cache: the teacher runs once per "
        "(image, view), and its cost is inside their training time.",
        "Gap closed = (R@1 − R@1 of the row compared with) / (teacher R@1 − that R@1); the low-res rows compare "
        "with the low-res student alone. Throughput: embedding images/s, batch 64, 2 threads, median of 3 batches.",
        "",
    ]
    for student in dict.fromkeys(r["student"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["student"] == student]
        c = rows[0]["config"]
        lines += [
            f"## {student}: {c['train']['epochs']} epoch(s), lr {c['train']['lr']:g}, "
            f"margin {c['train']['metric_loss_args'].get('margin', 0)}",
            "",
            "| method | R@1 | R@2 | R@4 | R@8 | MAP@R | gap closed | params (M) | MFLOPs (mult-adds) | CPU img/s | train s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by_key = {r["method"]: r for r in rows}
        for r in rows:
            runs = r["runs"]
            ref = statistics.fmean(x["recall@1"] for x in by_key[r["compare_to"]]["runs"])
            mean_r1 = statistics.fmean(x["recall@1"] for x in runs)
            gap = gap_closed(mean_r1, ref, teacher_r1) if r["method"] != r["compare_to"] else None
            label = r["label"] + (" *" if r["seeds"] == "all" else "")
            if r["config"]["distill"] and r["config"]["distill"].get("cross_quality"):
                label += f" ({r['config']['distill']['cross_quality']['resolution']} px)"
            cells = [label, *(_cell([x[k] for x in runs]) for k in KEYS),
                     "-" if gap is None else f"{100 * gap:.0f}%",
                     f"{runs[0]['parameters'] / 1e6:.2f}", f"{runs[0]['mflops']:.1f}",
                     f"{statistics.median(x['cpu_images_per_s'] for x in runs):.0f}",
                     f"{statistics.fmean(x['train_seconds'] for x in runs):.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_recall(result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = list(dict.fromkeys(r["student"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(students), figsize=(6 * len(students), 4.2), sharey=True)
    for ax, student in zip(axes, students):
        rows = [r for r in result["rows"] if r["student"] == student]
        means = [100 * statistics.fmean(x["recall@1"] for x in r["runs"]) for r in rows]
        stds = [100 * statistics.stdev([x["recall@1"] for x in r["runs"]]) if len(r["runs"]) > 1 else 0 for r in rows]
        ax.barh(range(len(rows)), means, xerr=stds, color=["#888" if r["method"].endswith("baseline") else "#3a7" for r in rows])
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
        ax.invert_yaxis()
        ax.axvline(100 * result["teacher"]["recall@1"], color="#c33", ls="--", label="teacher (Lite2)")
        ax.set_title(student)
        ax.set_xlabel("Recall@1 on the 42 unseen species (%)")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cub100"))
    p.add_argument("--output", default=str(ROOT / "runs" / "bench_cub100"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--smoke", action="store_true",
                   help="every row at 32 px for 2 steps, written under --output: checks the plumbing, not a result")
    p.add_argument("--render", action="store_true", help="no runs: write the table and plots from --results/cub100.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.output += "_smoke"
    results, docs = (Path(args.output), Path(args.output)) if args.smoke else (Path(args.results), Path(args.docs))
    if args.render:
        result = json.loads((results / "cub100.json").read_text())
        defined = {(s.name, m.key): m for s in STUDENTS for m in methods(s)}
        for row in result["rows"]:  # labels and comparisons follow the current definitions; figures stay
            m = defined[row["student"], row["method"]]
            row.update(label=m.label, compare_to=m.compare_to)
    else:
        result = run_benchmark(args)
    results.mkdir(parents=True, exist_ok=True)
    result = repo_relative(result)
    (results / "cub100.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (results / "cub100.md").write_text(table)
    plot_recall(result, docs / "bench_cub100_recall_at_1.png")
    curves = next(r for r in result["rows"] if r["method"] == "relative")["runs"][0]["run_dir"]
    plot_training_curves(ROOT / curves, docs / "bench_cub100_training_curves.png")  # run_dir: relative to the repository
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
