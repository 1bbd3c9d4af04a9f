"""Which ImageNet backbone, at which size, makes the strongest teacher? Scored on held-out *train* species.

Each candidate is the pretrained backbone with no head (``model.dim: null``: pooled features,
L2-normalised), so the choice costs one forward pass over the 14 held-out train species of
cub100 per candidate and never looks at the test species:

    python -m benchmarks.tuning.teacher_choice           # writes benchmarks/results/teacher_choice.json
    python -m benchmarks.tuning.teacher_choice --smoke   # each candidate at 48 px on a few species, to a temporary folder

The smoke, as ``cars196_teacher_choice --smoke``, checks the plumbing: its figures choose nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import RESULTS, command, smoke_folder
from benchmarks.common.teacher_choice import CANDIDATES, score_candidates, smoke_data

SMOKE_SIZE = 48  # as cars196_teacher_choice's smoke


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help=f"each candidate at {SMOKE_SIZE} px on 2 held-out species of a "
                                                        "few, 4 images each, written to a temporary folder unless --out")
    p.add_argument("--out", type=Path, help="the JSON (default: benchmarks/results/teacher_choice.json)")
    args = p.parse_args(argv)
    out, candidates, data = args.out or RESULTS / "teacher_choice.json", CANDIDATES, None
    if args.smoke:
        out = args.out or smoke_folder("teacher_choice") / out.name
        data = smoke_data(out.parent)
        candidates = [(backbone, SMOKE_SIZE) for backbone, _ in CANDIDATES]
    out.parent.mkdir(parents=True, exist_ok=True)
    score_candidates(candidates, out, command("benchmarks.tuning.teacher_choice", argv), data=data)
    print(f"-> {out}", flush=True)


if __name__ == "__main__":
    main()
