"""Which ImageNet backbone, at which size, makes the strongest teacher? Scored on held-out *train* species.

Each candidate is the pretrained backbone with no head (``model.dim: null``: pooled features,
L2-normalised), so the choice costs one forward pass over the 14 held-out train species of
cub100 per candidate and never looks at the test species:

    python -m benchmarks.tuning.teacher_choice   # writes benchmarks/results/teacher_choice.json
"""
from __future__ import annotations

from benchmarks.common import RESULTS
from benchmarks.common.teacher_choice import CANDIDATES, score_candidates


def main() -> None:
    score_candidates(CANDIDATES, RESULTS / "teacher_choice.json", "python -m benchmarks.tuning.teacher_choice")


if __name__ == "__main__":
    main()
