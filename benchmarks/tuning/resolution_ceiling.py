"""How much does input size alone cost? The teacher's own ImageNet features at the student's size.

The strong benchmark's teacher is EfficientNet-Lite0's pooled ImageNet features at 224 px; its students
see 96 px. Scoring the same features, with no training, at 96, 128, 160 and 224 px on the 14 held-out
train species separates what the student's size loses from what distillation can give back. The
MobileNetV2 student's own ImageNet features at 96 px are its starting point:

    python -m benchmarks.tuning.resolution_ceiling          # writes benchmarks/results/resolution_ceiling.json
    python -m benchmarks.tuning.resolution_ceiling --test   # the same on the 42 test species

``--test`` only reports (``resolution_ceiling_test.json``), beside the benchmark's table, what these
untrained networks score on the species the table is measured on; no choice reads it.
"""
from __future__ import annotations

import argparse

from benchmarks.common import RESULTS
from benchmarks.common.teacher_choice import VALIDATION_CLASSES, score_candidates

CANDIDATES = [("efficientnet_lite0", size) for size in (96, 128, 160, 224)] + [("mobilenet_v2", 96)]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", action="store_true", help="score the test species (report only) instead of held-out train species")
    test = p.parse_args().test
    name = "resolution_ceiling_test.json" if test else "resolution_ceiling.json"
    score_candidates(CANDIDATES, RESULTS / name,
                     "python -m benchmarks.tuning.resolution_ceiling" + (" --test" if test else ""),
                     validation_classes=0 if test else VALIDATION_CLASSES)
