"""Which ImageNet backbone makes the strongest Cars-196 teacher? Scored on 24 held-out *train* models.

The birds' candidates (``teacher_choice.py``: EfficientNet-Lite0 at 224 px, Lite1 at 240, Lite2 at 224, each its
pooled ImageNet features, no head) on the last 24 of the 98 train models of ../shared/data/cars196, read as the
Cars benchmark reads them (``configs/cars196/strong/base.yaml``: the cars196 reader, ``data.resize: squash``), so
the choice never looks at the test models. Every held-out image is a query against all the others. The
benchmark's teacher is ``configs/cars196/strong/teacher.yaml`` (Lite0): change it if another scores higher here.

    .venv/bin/python benchmarks/tuning/cars196_teacher_choice.py          # writes benchmarks/results/cars196_teacher_choice.json
    .venv/bin/python benchmarks/tuning/cars196_teacher_choice.py --smoke  # 2 images a model at 48 px, to runs/: the plumbing
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embdistill.config import load_config

from teacher_choice import CANDIDATES, ROOT, score_candidates  # benchmarks/tuning/teacher_choice.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from bench_common import few_per_class  # noqa: E402
from cars196 import CONFIGS, SMOKE_IMAGES_PER_MODEL, VALIDATION_CLASSES  # noqa: E402

SMOKE_SIZE = 48


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cars196"), help="the cars196 folder")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_IMAGES_PER_MODEL} images a model at {SMOKE_SIZE} px, "
                                                        "written under --output")
    p.add_argument("--output", default=str(ROOT / "runs" / "cars196_teacher_choice_smoke"), help="--smoke's folder")
    args = p.parse_args(argv)
    data = Path(args.data).resolve()
    out = ROOT / "benchmarks" / "results" / "cars196_teacher_choice.json"
    candidates = CANDIDATES
    if args.smoke:
        out = Path(args.output) / "cars196_teacher_choice.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        data = few_per_class(data, out.parent, SMOKE_IMAGES_PER_MODEL)
        candidates = [(backbone, SMOKE_SIZE) for backbone, _ in CANDIDATES]
    cfg = load_config(CONFIGS / "base.yaml", [f"data.root={data}", f"data.validation_classes={VALIDATION_CLASSES}",
                                              "data.num_workers=1"])
    command = "python benchmarks/tuning/cars196_teacher_choice.py" + (" --smoke" if args.smoke else "")
    score_candidates(candidates, out, command, data=cfg.data)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
