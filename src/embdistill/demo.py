"""`embdistill demo`: the paper's effect on real birds, on a CPU, in about a quarter of an hour.

A teacher (ImageNet features, no training) is scored; a small student is trained alone,
then again with the teacher's distances read from a teacher bank. Each student keeps
the epoch that scores best on 14 held-out train species, and everything is scored once
on the 42 unseen species. The recipes are the YAML files in ``configs/cub100/demo``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from embdistill.config import ConfigError, load_config
from embdistill.data.datasets import DATASET_URLS, DatasetError
from embdistill.engine.train import run
from embdistill.report import write_report, write_run_report

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "cub100" / "demo"
STEPS = ("teacher.yaml", "student.yaml", "distilled.yaml")  # distilled.yaml reads the teacher's run
KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")


def _check_data(root: Path) -> None:
    if not (root / "images.txt").is_file():
        raise DatasetError(
            f"no CUB-200-2011 data at {root} (expected images.txt, classes.txt, image_class_labels.txt, images/). "
            f"Download CUB-200-2011 from {DATASET_URLS['cub200']}, unpack it, and pass --data path/to/CUB_200_2011"
        )


def run_demo(data: Path, output: Path, progress: bool = True, overrides: Sequence[str] = ()) -> list[dict]:
    """Run the three recipes into ``output``; ``overrides`` go to every one (the tests shrink the runs with them)."""
    _check_data(data)
    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"the demo recipes are missing: expected {CONFIG_DIR} (run from a source checkout)")
    started = time.perf_counter()
    rows, run_dirs = [], []
    for filename in STEPS:
        o = [f"output_dir={output}", f"data.root={data.resolve()}", *overrides]
        if filename == "distilled.yaml":
            o += [f"distill.teacher={output / 'teacher'}", f"distill.bank={output / 'teacher.bank'}"]
        cfg = load_config(CONFIG_DIR / filename, o)
        step_started = time.perf_counter()
        result = run(cfg, progress=progress)
        write_run_report(result.run_dir, device=cfg.device, progress=progress)
        run_dirs.append(result.run_dir)
        summary = yaml.safe_load((result.run_dir / "summary.yaml").read_text())
        rows.append(_row(cfg.name, _network(cfg.model.backbone, cfg.model.backbone_args), cfg.data.image_size,
                         result.metrics, summary, time.perf_counter() - step_started))
    table = _table(rows, (time.perf_counter() - started) / 60)
    print("\n" + table)
    (output / "results.md").write_text(table + "\n")
    (output / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    report = write_report(run_dirs, out_dir=output, progress=progress)
    print(f"report with Recall@K curves and retrieval grids: {report}")
    return rows


def _network(backbone: str, args: dict) -> str:
    return backbone + (f"-{args['width']}" if "width" in args else "")


def _row(name: str, model: str, image_size: int, metrics: dict, summary: dict, seconds: float) -> dict:
    return {"run": name, "model": model, "image_size": image_size, **{k: round(100 * metrics[k], 1) for k in KEYS},
            "epoch": summary["epoch"] if "selected" in summary else None, "seconds": round(seconds)}


def _table(rows: list[dict], minutes: float) -> str:
    lines = ["| run | network | px | R@1 | R@2 | R@4 | R@8 | MAP@R | epoch kept | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["run"], r["model"], str(r["image_size"]), *(f"{r[k]:.1f}" for k in KEYS),
                 "-" if r["epoch"] is None else str(r["epoch"]), str(r["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    teacher, alone, distilled = (r["recall@1"] for r in rows)
    gain, gap = distilled - alone, teacher - alone
    lines += ["", f"Distillation: R@1 {alone:.1f} -> {distilled:.1f} ({gain:+.1f}"
              + (f", {100 * gain / gap:.0f}% of the gap to the teacher's {teacher:.1f}" if gap > 0 else "") + ").",
              "42 unseen CUB species (2,474 images), every image a query; each student kept the epoch that scored best on "
              f"14 held-out train species. Whole demo {minutes:.1f} min; s = each step's seconds (the distilled "
              "student's include filling the teacher bank)."]
    return "\n".join(lines)
