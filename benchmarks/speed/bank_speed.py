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

Time only on an otherwise idle machine: the figure is a ratio of training seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import yaml

from embdistill.config import load_config
from embdistill.engine.train import run

from benchmarks.common import RESULTS, ROOT, command, render_markdown

CONFIG = ROOT / "configs" / "cub100" / "strong" / "mobilenet_v2.yaml"
TEACHER = "runs/strong_val/teacher_lite0_224/last.pt"
BANK = "runs/banks/lite0_224_val44_v4.bank"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--output", default="runs/bank_speed")
    p.add_argument("--render", action="store_true", help="no runs: results/bank_speed.md again from its JSON")
    args = p.parse_args(argv)
    out = RESULTS
    if args.render:
        render_markdown(out / "bank_speed", markdown)
        return 0
    common = [f"output_dir={args.output}", "data.validation_classes=14", f"train.epochs={args.epochs}"]
    teacher = [f"distill.teacher={TEACHER}", "distill.teacher_image_size=224", "distill.cache_views=4",
               "distill.terms=[{name: relative}]"]
    variants = {"alone": [], "banked": [*teacher, f"distill.bank={BANK}"], "live": teacher}
    rows = {}
    for name, extra in variants.items():
        result = run(load_config(CONFIG, [*common, f"name={name}", *extra]), progress=False)
        s = yaml.safe_load((result.run_dir / "summary.yaml").read_text())
        rows[name] = {k: s[k] for k in ("train_seconds", "train_images_per_s", "teacher_forward_images", "recall@1")}
    alone = rows["alone"]["train_seconds"]
    result = {"command": command("benchmarks.speed.bank_speed", argv),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
              "epochs": args.epochs, "rows": rows,
              "ratio_banked": round(rows["banked"]["train_seconds"] / alone, 3),
              "ratio_live": round(rows["live"]["train_seconds"] / alone, 3)}
    (out / "bank_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bank_speed.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    rows, alone = result["rows"], result["rows"]["alone"]["train_seconds"]
    lines = [f"# Teacher cost per run: alone, banked, live ({result['epochs']} epoch(s), one run each)", "",
             f"`{result['command']}` on {result['machine']['cpu_count']} CPUs, {result['machine']['platform']}. "
             "MobileNetV2 at 96 px on 44 cub100 species (2,589 images); relative teacher: EfficientNet-Lite0 at 224 px.", "",
             "| run | train s | train img/s | teacher forward images | × alone |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['train_seconds']:.0f} | {r['train_images_per_s']:.0f} | {r['teacher_forward_images']} "
                     f"| {r['train_seconds'] / alone:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
