"""What a teacher costs per run: the same student trained alone, from a filled teacher bank, and live.

The student is the strong benchmark's MobileNetV2 at 96 px; the teacher is EfficientNet-Lite0 at 224 px
(``configs/cub100/strong``), on the 44-species tuning split, whose bank
``runs/banks/lite0_224_val44_v4.bank`` ``python -m benchmarks.tuning.strong_tuning`` fills. Three runs with one
seed, one schedule and the same number of steps:

- alone: no teacher;
- banked: relative teacher read from the bank (the teacher never runs);
- live: relative teacher with the in-run cache, so it runs once per (image, view), as before the bank.

    python -m benchmarks.speed.bank_speed            # writes benchmarks/results/bank_speed.{json,md}
    python -m benchmarks.speed.bank_speed --render   # the Markdown again from the JSON
    python -m benchmarks.speed.bank_speed --smoke    # the three runs, 2 steps each, on a tiny demo of its own

Time only on an otherwise idle machine: the figure is a ratio of training seconds. The smoke needs nothing in
``runs/``: it makes its own teacher and filled bank (``benchmarks/common/smoke.py``'s tiny demo, 8 + 8 species at
32 px), runs the same three variants on them in a temporary folder and writes its table to another (or ``--out``);
its times mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import yaml

from embdistill.config import load_config
from embdistill.engine.train import run

from benchmarks.common import RESULTS, ROOT, SHARED, command, render_markdown, smoke_folder
from benchmarks.common.smoke import LABELLED, tiny_demo

CONFIG = ROOT / "configs" / "cub100" / "strong" / "mobilenet_v2.yaml"
TEACHER = "runs/strong_val/teacher_lite0_224/last.pt"
BANK = "runs/banks/lite0_224_val44_v4.bank"
DESCRIPTION = "MobileNetV2 at 96 px on 44 cub100 species (2,589 images); relative teacher: EfficientNet-Lite0 at 224 px."


def measure(common: list[str], teacher: str, teacher_size: int, views: int, bank: str) -> dict[str, dict]:
    """The student alone, from the filled ``bank`` and with the live ``teacher`` (``common``: every run's overrides):
    each run's summary figures."""
    distill = [f"distill.teacher={teacher}", f"distill.teacher_image_size={teacher_size}", f"distill.cache_views={views}",
               "distill.terms=[{name: relative}]"]
    variants = {"alone": [], "banked": [*distill, f"distill.bank={bank}"], "live": distill}
    rows = {}
    for name, extra in variants.items():
        result = run(load_config(CONFIG, [*common, f"name={name}", *extra]), progress=False)
        s = yaml.safe_load((result.run_dir / "summary.yaml").read_text())
        rows[name] = {k: s[k] for k in ("train_seconds", "train_images_per_s", "teacher_forward_images", "recall@1")}
    return rows


def smoke(workdir: Path, data: Path) -> tuple[dict[str, dict], str]:
    """``measure`` on a tiny demo of its own made in ``workdir`` (a few species of ``data``), read from its bank at the
    size and views the demo filled it with; and what the table says it ran."""
    demo, subset = tiny_demo(workdir, data)
    filled = yaml.safe_load((demo / "distilled" / "config.yaml").read_text())["distill"]
    common = [f"output_dir={workdir / 'runs'}", f"data.root={subset}", *LABELLED, "train.epochs=1"]
    rows = measure(common, str(demo / "teacher"), filled["teacher_image_size"], filled["cache_views"], filled["bank"])
    return rows, (f"Smoke run, times mean nothing: MobileNetV2 at 32 px, 2 steps on a tiny demo's {subset.name} "
                  f"(benchmarks/common/smoke.py); relative teacher: its EfficientNet-Lite0 at {filled['teacher_image_size']} px, "
                  f"{filled['cache_views']} views banked.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--output", default="runs/bank_speed", help="where the runs go (--smoke: a temporary folder)")
    p.add_argument("--render", action="store_true", help="no runs: results/bank_speed.md again from its JSON")
    p.add_argument("--smoke", action="store_true", help="2 steps a run on a tiny demo of its own (a few species of "
                                                        "--data), its table in a temporary folder unless --out")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "cub100", help="--smoke: the CUB root it takes a few species of")
    p.add_argument("--out", type=Path, help="the folder of bank_speed.{json,md} (default: benchmarks/results)")
    args = p.parse_args(argv)
    if args.render:
        render_markdown((args.out or RESULTS) / "bank_speed", markdown)
        return 0
    extra = {}
    if args.smoke:
        out = args.out or smoke_folder("bank_speed")
        with tempfile.TemporaryDirectory(prefix="bank_speed_smoke_") as tmp:
            rows, extra["description"] = smoke(Path(tmp), args.data)
        args.epochs = 1
    else:
        out = args.out or RESULTS
        common = [f"output_dir={args.output}", "data.validation_classes=14", f"train.epochs={args.epochs}"]
        rows = measure(common, TEACHER, 224, 4, BANK)
    alone = rows["alone"]["train_seconds"]  # a smoke's 2 steps may round to 0.0 s on a fast machine: no ratio then
    result = {"command": command("benchmarks.speed.bank_speed", argv),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
              "epochs": args.epochs, "rows": rows,
              "ratio_banked": round(rows["banked"]["train_seconds"] / alone, 3) if alone else None,
              "ratio_live": round(rows["live"]["train_seconds"] / alone, 3) if alone else None, **extra}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bank_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bank_speed.md").write_text(markdown(result))
    print(markdown(result))
    print(f"-> {out / 'bank_speed'}.md, .json", flush=True)
    return 0


def markdown(result: dict) -> str:
    rows, alone = result["rows"], result["rows"]["alone"]["train_seconds"]
    lines = [f"# Teacher cost per run: alone, banked, live ({result['epochs']} epoch(s), one run each)", "",
             f"`{result['command']}` on {result['machine']['cpu_count']} CPUs, {result['machine']['platform']}. "
             + result.get("description", DESCRIPTION), "",
             "| run | train s | train img/s | teacher forward images | × alone |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = f"{r['train_seconds'] / alone:.2f}" if alone else "-"  # a smoke's alone run may round to 0.0 s
        lines.append(f"| {name} | {r['train_seconds']:.0f} | {r['train_images_per_s']:.0f} | {r['teacher_forward_images']} "
                     f"| {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
