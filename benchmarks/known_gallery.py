"""Known gallery: the student distils on the photos of the collection it will search; new photos query it
(issues #30 and #31).

    python -m benchmarks.known_gallery                      # birds, after `make demo` (its teacher)
    python -m benchmarks.known_gallery --dataset cars196    # cars (fine-tunes its teacher first if missing, ~30 min)
    python -m benchmarks.known_gallery --tune               # the rows and trials on the tuning classes
    python -m benchmarks.known_gallery --smoke              # 2 steps a run, seed 0, on tiny data, in a temporary folder

A user's collection has no class folders, and the server that embeds it has its photos. In each class of a split
(a bird species, a car model), every other photo (sorted by path) is the gallery, linked without labels into one flat
folder; the other photos are the queries: new photos, never seen by the student. Each row (``Collection.rows`` in
``benchmarks/common/collection.py``: a config a user can run with ``embdistill distill``) distils the student on
the gallery's photos alone (no labels; a quarter held out choose the epoch by knn_agreement@10), then four scores,
each query against the gallery (``embdistill evaluate --gallery-images``):

- **teacher**: the teacher's queries on the teacher's gallery (no training: the ceiling);
- **own**: the student's queries on the student's gallery (one network, as `search` with the student alone);
- **asymmetric**: the student's queries on the teacher's gallery (``--gallery-model``: the server embeds the
  collection once with the teacher, phones query with the student);
- **asymmetric INT8**: the same with the student exported ``--space teacher --quantize int8`` in ONNX Runtime.

The scores are not transductive: no query was distilled on; the gallery's photos were, as a user's collection
would be (the table says so). Labels serve only to score. ``--tune`` runs the rows' configs and the trials
(``Collection.trials``) on training classes the teacher never trained on (seed 0 unless ``--seeds``; runs under
``--runs``/tune/<row>/seed<n>), where the settings are chosen:
birds' teacher is ImageNet features, so all 58 training species; cars' is fine-tuned on 74 of the 98 training
models, so the 24 it held out. The rows run on the test classes. A row with ``Recipe.training_photos`` distils on the
training split's photos too (the tuning: only the classes the teacher trained on), labels never read, linked beside
the gallery's. A run that kept every epoch (``train.keep_epochs``) is also scored epoch by epoch, own R@1 beside
the knn_agreement@10 it chose by: labels choose nothing, they measure how far the label-free choice fell from the
best epoch. A ceiling (``Collection.ceilings``, run only when named) is not a recipe: it distils on the queries'
photos too, so its scores are transductive: what the student reaches when it has seen every photo. Each run's
scores are kept beside its checkpoints (``SCORES``) and read back while its checkpoints, the teacher and the photos
are the same ones (``--rescore`` scores again), so a row run again with more seeds scores only the new ones.
Writes ``benchmarks/results/known_gallery_<dataset>{,_tuning}.{md,json}``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from benchmarks.common import (ROOT, cell, few_per_class, merged, pooled_std, ran_by, render_results, spearman,
                               write_results)
from benchmarks.common.collection import (COLLECTIONS, DEMO, asymmetric_recall, distill, embedded, exported_queries,
                                          link_photos, run_dir, scored_photos, smoke_overrides, split_items,
                                          teacher_run, training_photos)
from benchmarks.common.smoke import SMALL, tiny_demo
from embdistill.atomic import write_atomic

SCORES = "known_gallery_scores.json"  # a run's scores, beside its checkpoints
CEILING = ("recall@1", "map@r", "queries", "gallery")  # the teacher's scores the table reads


def _stamp(path: Path) -> list:
    """What tells one file from its rewrite: its path, size and modification time."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def cached(path: Path, key: dict, score: Callable[[], dict], rescore: bool = False) -> dict:
    """``score()``, kept in ``path`` under ``key`` (what was scored, as ``_stamp``s and settings), read back instead
    while the key is the same."""
    if not rescore and path.is_file():
        kept = json.loads(path.read_text())
        if kept["key"] == key:
            return kept["scores"]
    scores = score()
    write_atomic(path, json.dumps({"key": key, "scores": scores}, indent=1).encode())
    return scores


def epoch_curve(run: Path, summary: dict, scored: Callable[[Path], dict]) -> list[dict]:
    """Each epoch ``run`` kept (``train.keep_epochs``) scored as its chosen one is, beside the knn_agreement@10 it
    chose by (None where the run did not score that epoch)."""
    from embdistill.checkpoints import EPOCHS

    agreement = {point["epoch"]: point.get("knn_agreement@10") for point in summary.get("validation_curve", [])}
    curve = []
    for path in sorted((run / EPOCHS).glob("epoch_*.pt")):
        epoch, own = int(path.stem.removeprefix("epoch_")), scored(path)
        curve.append({"epoch": epoch, "own_recall@1": own["recall@1"], "own_map@r": own["map@r"],
                      "knn_agreement@10": agreement.get(epoch)})
    return curve


def gallery_beside(gallery: Path, name: str, paths: list[str]) -> tuple[Path, int]:
    """A folder beside ``gallery`` (``<gallery>_with_<name>``) holding the gallery's links again and, in ``name``/, a
    link to each of ``paths``: photos a run distils on beside the collection's. Returns it and how many it added."""
    photos = gallery.with_name(f"{gallery.name}_with_{name}")
    link_photos(sorted(map(str, gallery.iterdir())), photos / "gallery")
    return photos, link_photos(paths, photos / name)


def measure(args: argparse.Namespace, command: str) -> dict:
    from embdistill.checkpoints import EPOCHS, run_checkpoint
    from embdistill.config import load_config
    from embdistill.engine.scoring.command import evaluate_checkpoint

    collection = COLLECTIONS[args.dataset]
    scoring = scored_photos(args)
    reader, data, split, tag, folder, part = (scoring.reader, scoring.data, scoring.split, scoring.tag,
                                              scoring.folder, scoring.part)
    teacher = run_checkpoint(args.teacher)  # best.pt where the teacher chose an epoch

    def scored(checkpoint: Path, **extra: object) -> dict:
        return evaluate_checkpoint(checkpoint, dataset=reader, root=str(data), split=split, gallery_images=folder,
                                   num_workers=0, progress=False, **extra)

    photos_key = {"photos": [reader, str(data), split], "gallery": [str(folder), scoring.linked]}
    ceiling = cached(args.teacher / f"known_gallery_scores_{tag}.json", {"teacher": _stamp(teacher), **photos_key},
                     lambda: {k: v for k, v in scored(teacher).items() if k in CEILING}, args.rescore)
    if not args.tune:
        items, in_gallery = split_items(data, split, folder, reader)

    @functools.cache
    def teacher_embeddings() -> np.ndarray:
        """The INT8 queries' gallery: the teacher's fp32 embeddings, once for every run that is scored."""
        return embedded(teacher, items)

    rows = []
    with tempfile.TemporaryDirectory(prefix="known_gallery_") as tmp:
        for row in args.rows:
            spec = {**collection.rows, **collection.trials, **collection.ceilings}[row]
            config, student, photos, beside, queried = spec.config, spec.student, folder, 0, 0
            bank = Path(load_config(ROOT / config).distill.bank).name.replace("gallery_test", f"gallery_{tag}")
            if spec.training_photos and part.split == "train" and not part.held_out:
                raise SystemExit(f"{row}: the tuning classes are the training classes; no other training photos")
            if spec.training_photos:  # the gallery beside the photos of the classes the teacher trained on
                photos, beside = gallery_beside(folder, "training",
                                                training_photos(args.data, collection.reader, part.held_out))
            if row in collection.ceilings:  # test classes only: the gallery beside the queries' own photos
                photos, queried = gallery_beside(folder, "queries",
                                                 [str(p) for p, known in zip(items.paths, in_gallery) if not known])
            overrides = [f"data.root={photos}", f"distill.bank={args.runs / 'photos' / bank}",
                         f"distill.teacher={args.teacher}", *args.overrides]
            runs = []
            for seed in args.seeds:
                start = time.perf_counter()
                run = distill(config, run_dir(args, row, seed), overrides, seed)
                summary = yaml.safe_load((run / "summary.yaml").read_text())
                chosen = run_checkpoint(run)  # best.pt; last.pt where the run kept its last epoch (a ceiling)

                def score() -> dict:
                    own = scored(chosen)
                    asym = scored(chosen, gallery_model=teacher)
                    scores = {"own_recall@1": own["recall@1"], "own_map@r": own["map@r"],
                              "asym_recall@1": asym["recall@1"], "asym_map@r": asym["map@r"],
                              "distilled_on_gallery": own["distilled_on_gallery"],
                              "transductive": bool(own.get("transductive"))}
                    if not args.tune:
                        int8 = exported_queries(chosen, items, Path(tmp) / f"{row}_{run.name}.int8.onnx",
                                                quantize="int8")
                        scores["int8_asym_recall@1"] = asymmetric_recall(teacher_embeddings(), int8, items, in_gallery)
                    if (run / EPOCHS).is_dir():
                        scores["epoch_curve"] = epoch_curve(run, summary, scored)
                    return scores

                key = {"best": _stamp(chosen), "teacher": _stamp(teacher), **photos_key, "int8": not args.tune,
                       "epochs": [_stamp(p) for p in sorted((run / EPOCHS).glob("epoch_*.pt"))]}
                result = {"seed": seed, "run_dir": str(run), "epoch": summary.get("epoch"),
                          "train_seconds": summary.get("train_seconds"),
                          "selected_agreement": summary.get("selected", {}).get("validation"),
                          **cached(run / SCORES, key, score, args.rescore)}
                runs.append(result)
                print(f"[known_gallery] {row} seed {seed}: teacher {100 * ceiling['recall@1']:.1f}, own "
                      f"{100 * result['own_recall@1']:.1f}, asymmetric {100 * result['asym_recall@1']:.1f}"
                      + (f", INT8 {100 * result['int8_asym_recall@1']:.1f}" if "int8_asym_recall@1" in result else "")
                      + f" ({time.perf_counter() - start:.0f} s)", flush=True)
            rows.append({"row": row, "config": config, "student": student, "command": command,
                         **({"training_photos": beside} if beside else {}),
                         **({"query_photos": queried} if queried else {}),
                         "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "runs": runs})
    return {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "dataset": args.dataset, "split": part.split, "teacher": str(teacher.parent),
            "teacher_recall@1": ceiling["recall@1"],
            "teacher_map@r": ceiling["map@r"], "queries": ceiling["queries"], "gallery": ceiling["gallery"],
            "linked": scoring.linked, "rows": rows}


def markdown(result: dict) -> str:
    dataset = result.get("dataset", "cub100")  # the first tables, birds only, do not say
    collection = COLLECTIONS[dataset]
    tune = result["split"] == "train"
    teacher = 100 * result["teacher_recall@1"]
    part = collection.tune if tune else collection.test
    ceilings = [row for row in result["rows"] if row.get("query_photos")]
    lines = [
        "# Known gallery: the student distils on the collection it will search "
        f"({dataset}{', tuning' if tune else ''})",
        "",
        *ran_by(result, "rows", "row"),
        "- machine: this project's 2-core CPU machine (no GPU); mean ± std over the seeds each row lists",
        f"- the {part.words}: in each {collection.kind} every other photo (sorted by path) is the gallery ({result['gallery']} "
        f"photos, linked without labels; the student distils on them, a quarter held out to choose the epoch by "
        f"knn_agreement@10), the other {result['queries']} photos query it and were never seen: the scores are not "
        "transductive" + (" (but the ceilings', below)" if ceilings else ""),
        f"- teacher: `{result['teacher']}` ({collection.teacher.description}): R@1 {teacher:.1f}, "
        f"MAP@R {100 * result['teacher_map@r']:.1f}, its queries on its gallery",
        *[f"- {row['row']} also distils on the {row['training_photos']} photos of the training {collection.kind}s"
          + (" the teacher trained on" if part.held_out and tune else "")
          + ", in a folder of their own beside the gallery's (their labels never read)"
          for row in result["rows"] if row.get("training_photos")],
        *[f"- {row['row']} is a ceiling, not a recipe: it also distils on the {row['query_photos']} query photos, in a "
          "folder of their own beside the gallery's (their labels never read), holds out 1% of its photos instead of "
          "a quarter and keeps its last epoch: its scores are transductive, what the student reaches when it has seen "
          "the photos it is scored on" for row in ceilings],
        "- own = student queries, student gallery; asymmetric = student queries, teacher gallery; INT8 = the "
        "student's `export --space teacher --quantize int8` in ONNX Runtime against the same gallery; gain = "
        "asymmetric − own, with the pooled std of the two; below teacher = teacher − own",
        "",
        "| row | student | config | seeds | own R@1 | below teacher | asymmetric R@1 | gain (pooled std) | asymmetric INT8 R@1 "
        "| own MAP@R | asymmetric MAP@R | epoch | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        runs = row["runs"]
        own = [100 * r["own_recall@1"] for r in runs]
        asym = [100 * r["asym_recall@1"] for r in runs]
        pooled = pooled_std(own, asym)
        int8 = [100 * r["int8_asym_recall@1"] for r in runs if "int8_asym_recall@1" in r]
        lines.append(
            f"| {row['row']} | {row['student']} | `{row['config']}` | {', '.join(str(r['seed']) for r in runs)} | "
            f"{cell(own)} | {teacher - statistics.fmean(own):.1f} | {cell(asym)} | "
            f"{statistics.fmean(asym) - statistics.fmean(own):+.1f}" + (f" ({pooled:.1f})" if pooled is not None else "")
            + f" | {cell(int8) if int8 else '—'} | {cell([100 * r['own_map@r'] for r in runs])} | "
            f"{cell([100 * r['asym_map@r'] for r in runs])} | {', '.join(str(r['epoch']) for r in runs)} | "
            f"{', '.join(str(r['train_seconds']) for r in runs)} |")
    return "\n".join(lines + epoch_choice(result)) + "\n"


def epoch_choice(result: dict) -> list[str]:
    """The runs that kept every epoch: the epoch knn_agreement@10 chose against the best one by own R@1; then a
    line a row: how far its runs fell short, and what keeping the last epoch (no choice at all) would have cost."""
    kept = [(row["row"], run) for row in result["rows"] for run in row["runs"] if run.get("epoch_curve")]
    if not kept:
        return []
    lines = ["", "## Does knn_agreement@10 choose the best epoch?", "",
             "Runs that kept every epoch (`train.keep_epochs`), each epoch scored as the table scores the chosen one "
             "(own R@1, its queries on its gallery). These labelled scores chose nothing: the run chose by "
             "knn_agreement@10 on its held-out photos, without labels.", "",
             "| row | seed | chosen epoch | its R@1 | best epoch | its R@1 | short of the best | Spearman (R@1, agreement) "
             "| own R@1 by epoch | knn_agreement@10 by epoch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    shortfalls: dict[str, list[tuple[float, float]]] = {}
    for row, run in kept:
        curve = run["epoch_curve"]
        r1 = {point["epoch"]: 100 * point["own_recall@1"] for point in curve}
        best = max(r1, key=lambda epoch: (r1[epoch], -epoch))  # the earlier epoch on a tie
        short = r1[best] - r1[run["epoch"]]
        shortfalls.setdefault(row, []).append((short, r1[best] - r1[max(r1)]))
        agree = [(point["own_recall@1"], point["knn_agreement@10"]) for point in curve
                 if point["knn_agreement@10"] is not None]
        rho = spearman(*map(list, zip(*agree))) if len(agree) > 2 else None
        agreement = ["—" if point["knn_agreement@10"] is None else f"{point['knn_agreement@10']:.3f}" for point in curve]
        lines.append(
            f"| {row} | {run['seed']} | {run['epoch']} | {r1[run['epoch']]:.1f} | {best} | {r1[best]:.1f} | "
            f"{short:.1f} | {'—' if rho is None else f'{rho:.2f}'} | "
            f"{', '.join(f'{r1[e]:.1f}' for e in sorted(r1))} | "
            f"{', '.join(agreement)} |")
    lines.append("")
    for row, pairs in shortfalls.items():
        chosen, last = ([round(pair[i], 1) for pair in pairs] for i in (0, 1))
        lines.append(f"- {row}, {len(pairs)} run{'s' * (len(pairs) > 1)}: the chosen epoch "
                     f"{', '.join(f'{x:.1f}' for x in chosen)} R@1 short of the best (mean "
                     f"{statistics.fmean(chosen):.1f}; {sum(x <= 1 for x in chosen)} of {len(chosen)} within 1 R@1); "
                     f"the last epoch, kept without choosing, {', '.join(f'{x:.1f}' for x in last)} short")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(COLLECTIONS), default="cub100")
    every = sorted({row for c in COLLECTIONS.values() for row in [*c.rows, *c.trials, *c.ceilings]})
    parser.add_argument("--rows", nargs="+", choices=every,
                        help="default: every row of the dataset (--tune: and every trial; a ceiling only when named)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (--tune: 0)")
    parser.add_argument("--tune", action="store_true", help="the rows and trials on the tuning classes instead (default seed 0)")
    parser.add_argument("--runs", type=Path, help="where the runs go (default: runs/known_gallery for cub100, "
                        "runs/known_gallery_<dataset> for the others)")
    parser.add_argument("--out", type=Path,
                        help="results path without suffix (default: benchmarks/results/known_gallery_<dataset>)")
    parser.add_argument("--render", action="store_true",
                        help="only write the .md again from the .json (its paths made repository-relative)")
    parser.add_argument("--demo", type=Path, default=DEMO,
                        help="cub100: the `make demo` folder whose teacher the rows use")
    parser.add_argument("--data", type=Path, help="the dataset's root (default: ../shared/data/<dataset>)")
    parser.add_argument("--rescore", action="store_true",
                        help="score every run again, even where its kept scores (%s) are of the same files" % SCORES)
    parser.add_argument("--smoke", action="store_true",
                        help="2 training steps a run, seed 0, on tiny data and a teacher of its own, all in a "
                        "temporary folder")
    args = parser.parse_args(argv)
    collection = COLLECTIONS[args.dataset]
    stem = f"known_gallery_{args.dataset}" + ("_tuning" if args.tune else "")
    if args.render:
        render_results(args.out or ROOT / "benchmarks" / "results" / stem, markdown)
        return 0
    command = "python -m benchmarks.known_gallery " + " ".join(map(shlex.quote, argv if argv is not None else sys.argv[1:]))
    args.seeds = args.seeds or ([0] if args.tune or args.smoke else [0, 1, 2])
    order = [*collection.rows, *collection.trials] if args.tune else [*collection.rows, *collection.ceilings]
    args.rows = args.rows or [row for row in order if row not in collection.ceilings]
    if set(args.rows) - set(order):
        parser.error(f"{sorted(set(args.rows) - set(order))} are not {args.dataset} "
                     + ("trials or rows" if args.tune else "rows or ceilings (--tune trials are not)"))
    args.runs = args.runs or ROOT / "runs" / collection.runs
    args.data = args.data or collection.data
    args.overrides, teacher_overrides = [], []
    with tempfile.TemporaryDirectory(prefix="known_gallery_smoke_") as smoke_dir:
        if args.smoke:
            args.runs, args.out = Path(smoke_dir) / "runs", args.out or Path(smoke_dir) / stem
            if collection.teacher.config is None:
                args.demo, args.data = tiny_demo(Path(smoke_dir), args.data)
            else:  # 2 photos of every class: the gallery holds one of each, the queries the other
                args.data = few_per_class(args.data, Path(smoke_dir), 2)
                teacher_overrides = [*SMALL, "data.image_size=64", "train.epochs=0"]  # no fine-tuning: a smoke
            args.seeds = args.seeds[:1]
        args.teacher = teacher_run(args, collection.teacher, teacher_overrides)
        if not (args.teacher / "last.pt").is_file():
            raise SystemExit(f"{args.teacher} is missing: run `make demo` first")
        if args.smoke:
            args.overrides = [*smoke_overrides(args.teacher), "train.keep_epochs=true"]  # and its epoch table
        out = args.out or ROOT / "benchmarks" / "results" / stem
        write_results(out, merged(out, measure(args, command.strip()), "rows", "row", order), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
