"""How much does input size alone cost? The teacher's own ImageNet features at the student's size.

The strong benchmark's teacher is EfficientNet-Lite0's pooled ImageNet features at 224 px; its students
see 96 px. Scoring the same features, with no training, at 96, 128, 160 and 224 px on the 14 held-out
train species separates what the student's size loses from what distillation can give back. The
MobileNetV2 student's own ImageNet features at 96 px are its starting point:

    python -m benchmarks.tuning.resolution_ceiling          # writes benchmarks/results/resolution_ceiling.json
    python -m benchmarks.tuning.resolution_ceiling --test   # the same on the 42 test species

``--test`` only reports (``resolution_ceiling_test.json``), beside the benchmark's table, what these
untrained networks score on the species the table is measured on; no choice reads it.

    python -m benchmarks.tuning.resolution_ceiling --smoke  # every candidate on a few species, to a temporary folder

The smoke keeps each candidate's input size (the sizes are what this measures; a handful of images costs nothing at
224 px) and scores 2 held-out species of a few (``--test``: 4 test species): the plumbing, not a ceiling.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import RESULTS, command, smoke_folder
from benchmarks.common.teacher_choice import VALIDATION_CLASSES, score_candidates, smoke_data

CANDIDATES = [("efficientnet_lite0", size) for size in (96, 128, 160, 224)] + [("mobilenet_v2", 96)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", action="store_true", help="score the test species (report only) instead of held-out train species")
    p.add_argument("--smoke", action="store_true", help="every candidate on a few species, 4 images each, written to a "
                                                        "temporary folder unless --out")
    p.add_argument("--out", type=Path, help="the JSON (default: benchmarks/results/resolution_ceiling.json, with --test "
                                            "resolution_ceiling_test.json)")
    args = p.parse_args(argv)
    validation_classes = 0 if args.test else VALIDATION_CLASSES
    out = args.out or RESULTS / ("resolution_ceiling_test.json" if args.test else "resolution_ceiling.json")
    data = None
    if args.smoke:
        out = args.out or smoke_folder("resolution_ceiling") / out.name
        data = smoke_data(out.parent, validation_classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    score_candidates(CANDIDATES, out, command("benchmarks.tuning.resolution_ceiling", argv),
                     validation_classes=validation_classes, data=data)
    print(f"-> {out}", flush=True)


if __name__ == "__main__":
    main()
