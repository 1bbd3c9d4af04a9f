"""Which ImageNet backbone makes the strongest Cars-196 teacher? Scored on 24 held-out *train* models.

The birds' candidates (``benchmarks/common/teacher_choice.py``: EfficientNet-Lite0 at 224 px, Lite1 at 240, Lite2 at 224, each its
pooled ImageNet features, no head) on the last 24 of the 98 train models of ../shared/data/cars196, read as the
Cars benchmark reads them (``configs/cars196/strong/base.yaml``: the cars196 reader, ``data.resize: squash``), so
the choice never looks at the test models. Every held-out image is a query against all the others. The
benchmark's teacher is ``configs/cars196/strong/teacher.yaml`` (Lite0): change it if another scores higher here.

    python -m benchmarks.tuning.cars196_teacher_choice          # writes benchmarks/results/cars196_teacher_choice.json
    python -m benchmarks.tuning.cars196_teacher_choice --smoke  # 2 images a model at 48 px, to a temporary folder: the plumbing
"""
from __future__ import annotations

import argparse
from pathlib import Path

from embdistill.config import load_config

from benchmarks.common import RESULTS, ROOT, SHARED, few_per_class, smoke_folder
from benchmarks.common.teacher_choice import CANDIDATES, score_candidates

CONFIGS = ROOT / "configs" / "cars196" / "strong"  # the Cars benchmark's (benchmarks/cars196.py)
VALIDATION_CLASSES = load_config(CONFIGS / "teacher.yaml").data.validation_classes  # its 24 held-out train models
SMOKE_IMAGES_PER_MODEL = 2  # as the Cars benchmark's --smoke
SMOKE_SIZE = 48


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "data" / "cars196"), help="the cars196 folder")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_IMAGES_PER_MODEL} images a model at {SMOKE_SIZE} px, "
                                                        "written under --output")
    p.add_argument("--output", help="--smoke's folder (default: a temporary one)")
    args = p.parse_args(argv)
    data = Path(args.data).resolve()
    out = RESULTS / "cars196_teacher_choice.json"
    candidates = CANDIDATES
    if args.smoke:
        out = Path(args.output or smoke_folder("cars196_teacher_choice")) / "cars196_teacher_choice.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        data = few_per_class(data, out.parent, SMOKE_IMAGES_PER_MODEL)
        candidates = [(backbone, SMOKE_SIZE) for backbone, _ in CANDIDATES]
    cfg = load_config(CONFIGS / "base.yaml", [f"data.root={data}", f"data.validation_classes={VALIDATION_CLASSES}",
                                              "data.num_workers=1"])
    command = "python -m benchmarks.tuning.cars196_teacher_choice" + (" --smoke" if args.smoke else "")
    score_candidates(candidates, out, command, data=cfg.data)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
