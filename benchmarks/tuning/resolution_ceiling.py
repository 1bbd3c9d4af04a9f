"""How much does input size alone cost? The teacher's own ImageNet features at the student's size.

The strong benchmark's teacher is EfficientNet-Lite0's pooled ImageNet features at 224 px; its students
see 96 px. Scoring the same features, with no training, at 96, 128, 160 and 224 px on the 14 held-out
train species (never the test species) separates what the student's size loses from what distillation
can give back. The MobileNetV2 student's own ImageNet features at 96 px are its starting point:

    .venv/bin/python benchmarks/tuning/resolution_ceiling.py   # writes benchmarks/results/resolution_ceiling.json
"""
from __future__ import annotations

from teacher_choice import ROOT, score_candidates  # benchmarks/tuning/teacher_choice.py, beside this script

CANDIDATES = [("efficientnet_lite0", size) for size in (96, 128, 160, 224)] + [("mobilenet_v2", 96)]


if __name__ == "__main__":
    score_candidates(CANDIDATES, ROOT / "benchmarks" / "results" / "resolution_ceiling.json",
                     "python benchmarks/tuning/resolution_ceiling.py")
