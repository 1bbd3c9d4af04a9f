"""Does the teacher's gallery help a student's queries less as the gallery holds more classes? (issue #31)

    python -m benchmarks.gallery_density --dataset cars196 --rows mobilenet025_views8           # the test models
    python -m benchmarks.gallery_density --dataset cars196 --tune --rows mobilenet025_views8    # the tuning models

On cars, the 24 training models the teacher held out promised a gain from the teacher's gallery that the 98 test
models took back (docs/deploy.md). One guess: a gallery of more classes holds more near each query's class, and a
student's queries, further from the teacher's embeddings than the teacher's own, lose more of them. This measures
it on ``benchmarks.known_gallery``'s finished runs, training nothing: every query and gallery photo is embedded
once by the student (its own space, and its teacher space), and by the teacher; then, for gallery sizes of
1/8, 1/4, 1/2 and all of the classes, ``--draws`` random sets of that many classes (the same sets for every run)
keep only their queries and gallery photos, and R@1 is scored on each (own: student queries, student gallery;
asymmetric: student queries, teacher gallery; teacher: the teacher's queries on its gallery). The whole set
gives ``benchmarks.known_gallery``'s figures again. Writes ``benchmarks/results/gallery_density_<dataset>{,_tuning}``.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
from benchmarks.common import ROOT, cell, write_results
from benchmarks.common.collection import (COLLECTIONS, DEMO, asymmetric_recall, embedded, run_dir, scored_photos,
                                          split_items, teacher_folder)


def class_sets(classes: np.ndarray, draws: int) -> dict[int, list[np.ndarray]]:
    """For 1/8, 1/4, 1/2 and all of ``classes``: ``draws`` random sets of that many (one set for all of them)."""
    rng = np.random.default_rng(0)
    n = len(classes)
    sizes = sorted({max(2, n // 8), max(2, n // 4), max(2, n // 2)} - {n})
    return {**{m: [rng.choice(classes, m, replace=False) for _ in range(draws)] for m in sizes}, n: [classes]}


def measure(args: argparse.Namespace, command: str) -> dict:
    from embdistill.checkpoints import run_checkpoint

    photos = scored_photos(args)
    items, in_gallery = split_items(photos.data, photos.split, photos.folder, photos.reader)
    labels = np.asarray(items.labels)
    sets = class_sets(np.unique(labels), args.draws)
    teacher = embedded(run_checkpoint(args.teacher), items)
    ceiling = {m: [asymmetric_recall(teacher, teacher, items, in_gallery, c) for c in chosen]
               for m, chosen in sets.items()}
    rows = []
    for row in args.rows:
        runs = []
        for seed in args.seeds:
            best = run_dir(args, row, seed) / "best.pt"
            if not best.is_file():
                raise SystemExit(f"{best} is missing: run `python -m benchmarks.known_gallery --dataset {args.dataset}"
                                 f"{' --tune' if args.tune else ''} --rows {row} --seeds {seed}` first")
            own, asym = embedded(best, items), embedded(best, items, space="teacher")
            runs.append({"seed": seed, "run_dir": str(best.parent), "by_classes": {
                str(m): {"own_recall@1": statistics.fmean(asymmetric_recall(own, own, items, in_gallery, c)
                                                          for c in chosen),
                         "asym_recall@1": statistics.fmean(asymmetric_recall(teacher, asym, items, in_gallery, c)
                                                           for c in chosen)}
                for m, chosen in sets.items()}})
            print(f"[gallery_density] {row} seed {seed}: " + ", ".join(
                f"{m} classes own {100 * r['own_recall@1']:.1f} asym {100 * r['asym_recall@1']:.1f}"
                for m, r in runs[-1]["by_classes"].items()), flush=True)
        rows.append({"row": row, "runs": runs})
    return {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "dataset": args.dataset, "split": photos.split, "teacher": str(args.teacher), "draws": args.draws,
            "classes": {str(m): {"draws": len(chosen), "teacher_recall@1": statistics.fmean(ceiling[m]),
                                 "gallery_photos": statistics.fmean(int((np.isin(labels, c) & in_gallery).sum())
                                                                    for c in chosen)}
                        for m, chosen in sets.items()},
            "rows": rows}


def markdown(result: dict) -> str:
    tune = result["split"] != "test"
    lines = [
        f"# The teacher's gallery against the student's, by how many classes the gallery holds "
        f"({result['dataset']}{', tuning' if tune else ''})",
        "",
        f"- `{result['command']}` ({result['date']})",
        "- machine: this project's 2-core CPU machine (no GPU); nothing trained: the finished runs of "
        "`benchmarks.known_gallery` (their `best.pt`), mean ± std over their seeds",
        f"- each gallery size: the mean over {result['draws']} random sets of that many classes (the same sets for "
        "every run; one set, all of them, for the largest), their queries against their gallery photos",
        f"- teacher: `{result['teacher']}`; own = student queries, student gallery; asymmetric = student queries, "
        "teacher gallery; gain = asymmetric − own",
        "",
        "| row | classes | gallery photos | teacher R@1 | own R@1 | asymmetric R@1 | gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        for m, size in result["classes"].items():
            own = [100 * r["by_classes"][m]["own_recall@1"] for r in row["runs"]]
            asym = [100 * r["by_classes"][m]["asym_recall@1"] for r in row["runs"]]
            lines.append(f"| {row['row']} | {m} | {size['gallery_photos']:.0f} | "
                         f"{100 * size['teacher_recall@1']:.1f} | {cell(own)} | {cell(asym)} | "
                         f"{statistics.fmean(asym) - statistics.fmean(own):+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(COLLECTIONS), default="cars196")
    parser.add_argument("--rows", nargs="+", required=True,
                        help="rows (or, with --tune, trials) of benchmarks.known_gallery")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tune", action="store_true", help="the tuning classes' runs instead of the test classes'")
    parser.add_argument("--draws", type=int, default=50, help="random class sets per gallery size")
    parser.add_argument("--runs", type=Path, help="benchmarks.known_gallery's --runs (default: its own)")
    parser.add_argument("--data", type=Path, help="the dataset's root (default: ../shared/data/<dataset>)")
    parser.add_argument("--demo", type=Path, default=DEMO, help="cub100: `make demo`'s folder")
    parser.add_argument("--out", type=Path, help="results path without suffix")
    args = parser.parse_args(argv)
    collection = COLLECTIONS[args.dataset]
    known = {**collection.rows, **collection.trials}
    if unknown := [row for row in args.rows if row not in known]:
        parser.error(f"{unknown} are not {args.dataset} rows or trials of benchmarks.known_gallery: {sorted(known)}")
    args.runs = args.runs or ROOT / "runs" / collection.runs
    args.data = args.data or collection.data
    args.teacher = teacher_folder(args, collection.teacher)
    if not (args.teacher / "summary.yaml").is_file():
        raise SystemExit(f"{args.teacher} is missing: `python -m benchmarks.known_gallery --dataset {args.dataset}` "
                         "trains it")
    command = "python -m benchmarks.gallery_density " + shlex.join(argv if argv is not None else sys.argv[1:])
    stem = f"gallery_density_{args.dataset}" + ("_tuning" if args.tune else "")
    write_results(args.out or ROOT / "benchmarks" / "results" / stem, measure(args, command), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
