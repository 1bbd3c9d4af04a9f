"""Known gallery: the student distils on the photos of the collection it will search; new photos query it
(issues #30 and #31).

    python -m benchmarks.known_gallery                # after `make demo` (its teacher)
    python -m benchmarks.known_gallery --tune         # the rows and trials on the 58 training species
    python -m benchmarks.known_gallery --smoke        # 2 steps a run, seed 0, on its own tiny demo, to a temporary folder

A user's collection has no class folders, and the server that embeds it has its photos. In each species of a split,
every other photo (sorted by path) is the gallery, linked without labels into one flat folder; the other photos
are the queries: new photos, never seen by the student. Each row (``ROWS``: a config a user can run with
``embdistill distill``) distils the student on the gallery's photos alone (no labels; a quarter held out choose the
epoch by knn_agreement@10), then four scores, each query against the gallery (``embdistill evaluate
--gallery-images``):

- **teacher**: the teacher's queries on the teacher's gallery (no training: the ceiling);
- **own**: the student's queries on the student's gallery (one network, as `search` with the student alone);
- **asymmetric**: the student's queries on the teacher's gallery (``--gallery-model``: the server embeds the
  collection once with the teacher, phones query with the student);
- **asymmetric INT8**: the same with the student exported ``--space teacher --quantize int8`` in ONNX Runtime.

The scores are not transductive: no query was distilled on; the gallery's photos were, as a user's collection
would be (the table says so). Labels serve only to score. ``--tune`` runs the rows' configs and the trials
(``TRIALS``) on the 58 training species (seed 0), where the settings are chosen; the rows run on the 42 test species. Writes
``benchmarks/results/known_gallery_cub100{,_tuning}.{md,json}``.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from benchmarks.common import ROOT, SHARED, cell, merged, pooled_std, ran_by, render_results, write_results
from benchmarks.common.collection import distill, embedded, link_gallery, smoke_overrides, split_items
from benchmarks.common.smoke import tiny_demo

if TYPE_CHECKING:
    from embdistill.data import ImageList

DEMO = ROOT / "runs" / "demo"  # `make demo`: the teacher
# row -> (config, the student as the table names it)
ROWS = {
    "asymmetric": ("configs/cub100/known_gallery/asymmetric.yaml", "MobileNetV2 at 96 px (the demo's student)"),
    "asymmetric_160": ("configs/cub100/known_gallery/asymmetric_160.yaml", "MobileNetV2 at 160 px"),
    "mobilenet025_32ep": ("configs/cub100/known_gallery/mobilenet025_32ep.yaml",
                          "MobileNet-0.25 (ImageNet) at 160 px, 32 epochs"),
}
# --tune only: settings tried on the training species beside the rows'
TRIALS = {
    "asymmetric_b256": ("configs/cub100/known_gallery/trials/asymmetric_b256.yaml", "MobileNetV2 at 96 px, 256 a batch"),
    "asymmetric_t005": ("configs/cub100/known_gallery/trials/asymmetric_t005.yaml", "MobileNetV2 at 96 px, T 0.05"),
    "mobilenet025": ("configs/cub100/known_gallery/mobilenet025.yaml", "MobileNet-0.25 (ImageNet) at 160 px, 8 epochs"),
}


def int8_scores(run: Path, items: ImageList, in_gallery: np.ndarray, teacher_embeddings: np.ndarray,
                workdir: Path) -> dict[str, float]:
    """The student's INT8 export (in the teacher's space, ONNX Runtime) querying the teacher's fp32 gallery."""
    import torch

    from embdistill.deploy.export import export_checkpoint
    from embdistill.evaluation.metrics import retrieval_metrics
    from embdistill.search.encoder import load_encoder

    exported = export_checkpoint(run / "best.pt", "onnx", workdir / f"{run.parent.name}_{run.name}.int8.onnx",
                                 quantize="int8", space="teacher")
    queries = embedded(run / "best.pt", items, load_encoder(exported.path, threads=torch.get_num_threads()))
    labels = np.asarray(items.labels)
    return retrieval_metrics(teacher_embeddings[in_gallery], labels[in_gallery], query_embeddings=queries[~in_gallery],
                             query_labels=labels[~in_gallery], ks=(1,))


def measure(args: argparse.Namespace, command: str) -> dict:
    from embdistill.config import load_config
    from embdistill.engine.scoring.command import evaluate_checkpoint

    split = "train" if args.tune else "test"
    folder = args.runs / "photos" / f"gallery_{split}"  # never a run's own folder: its outputs would become photos
    count = link_gallery(args.data, split, folder)
    teacher = args.demo / "teacher" / "last.pt"

    def scored(checkpoint: Path, **extra: object) -> dict:
        return evaluate_checkpoint(checkpoint, dataset="cub200", root=str(args.data), split=split, gallery_images=folder,
                                   num_workers=0, progress=False, **extra)

    ceiling = scored(teacher)
    if not args.tune:  # the INT8 queries' gallery: the teacher's fp32 embeddings, once for every run
        items, in_gallery = split_items(args.data, split, folder)
        teacher_embeddings = embedded(teacher, items)
    rows = []
    with tempfile.TemporaryDirectory(prefix="known_gallery_") as tmp:
        for row in args.rows:
            config, student = {**ROWS, **TRIALS}[row]
            bank = Path(load_config(ROOT / config).distill.bank).name.replace("gallery_test", f"gallery_{split}")
            overrides = [f"data.root={folder}", f"distill.bank={args.runs / 'photos' / bank}", *args.overrides]
            runs = []
            for seed in args.seeds:
                start = time.perf_counter()
                run = distill(config, args.runs / ("tune" if args.tune else row) / (row if args.tune else f"seed{seed}"),
                              overrides, seed)
                summary = yaml.safe_load((run / "summary.yaml").read_text())
                own = scored(run / "best.pt")
                asym = scored(run / "best.pt", gallery_model=teacher)
                result = {"seed": seed, "run_dir": str(run), "epoch": summary.get("epoch"),
                          "train_seconds": summary.get("train_seconds"),
                          "selected_agreement": summary.get("selected", {}).get("validation"),
                          "own_recall@1": own["recall@1"], "own_map@r": own["map@r"],
                          "asym_recall@1": asym["recall@1"], "asym_map@r": asym["map@r"],
                          "distilled_on_gallery": own["distilled_on_gallery"], "transductive": bool(own.get("transductive"))}
                if not args.tune:
                    int8 = int8_scores(run, items, in_gallery, teacher_embeddings, Path(tmp))
                    result["int8_asym_recall@1"] = int8["recall@1"]
                runs.append(result)
                print(f"[known_gallery] {row} seed {seed}: teacher {100 * ceiling['recall@1']:.1f}, own "
                      f"{100 * own['recall@1']:.1f}, asymmetric {100 * asym['recall@1']:.1f}"
                      + (f", INT8 {100 * result['int8_asym_recall@1']:.1f}" if "int8_asym_recall@1" in result else "")
                      + f" ({time.perf_counter() - start:.0f} s)", flush=True)
            rows.append({"row": row, "config": config, "student": student, "command": command,
                         "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "runs": runs})
    return {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "split": split, "teacher": str(teacher.parent), "teacher_recall@1": ceiling["recall@1"],
            "teacher_map@r": ceiling["map@r"], "queries": ceiling["queries"], "gallery": ceiling["gallery"],
            "linked": count, "rows": rows}


def markdown(result: dict) -> str:
    tune = result["split"] == "train"
    teacher = 100 * result["teacher_recall@1"]
    species = "58 training species (where the settings were chosen)" if tune else "42 test species, unseen in training"
    lines = [
        f"# Known gallery: the student distils on the collection it will search (cub100{', tuning' if tune else ''})",
        "",
        *ran_by(result, "rows", "row"),
        "- machine: this project's 2-core CPU machine (no GPU); mean ± std over the seeds each row lists",
        f"- the {species}: in each species every other photo (sorted by path) is the gallery ({result['gallery']} "
        f"photos, linked without labels; the student distils on them, a quarter held out to choose the epoch by "
        f"knn_agreement@10), the other {result['queries']} photos query it and were never seen: the scores are not "
        "transductive",
        f"- teacher: `{result['teacher']}` (EfficientNet-Lite0's ImageNet features at 160 px, 1,280-d): R@1 {teacher:.1f}, "
        f"MAP@R {100 * result['teacher_map@r']:.1f}, its queries on its gallery",
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=[*ROWS, *TRIALS], help="default: every row (--tune: and every trial)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (--tune: 0)")
    parser.add_argument("--tune", action="store_true", help="the rows on the 58 training species instead, seed 0")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "known_gallery", help="where the runs go")
    parser.add_argument("--out", type=Path, help="results path without suffix (default: benchmarks/results/known_gallery_cub100)")
    parser.add_argument("--render", action="store_true",
                        help="only write the .md again from the .json (its paths made repository-relative)")
    parser.add_argument("--demo", type=Path, default=DEMO, help="the `make demo` folder whose teacher the rows use")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cub100", help="the CUB root (cub100)")
    parser.add_argument("--smoke", action="store_true",
                        help="2 training steps a run, seed 0, on a tiny demo of its own, all in a temporary folder")
    args = parser.parse_args(argv)
    stem = "known_gallery_cub100" + ("_tuning" if args.tune else "")
    if args.render:
        render_results(args.out or ROOT / "benchmarks" / "results" / stem, markdown)
        return 0
    command = "python -m benchmarks.known_gallery " + " ".join(map(shlex.quote, argv if argv is not None else sys.argv[1:]))
    args.seeds = args.seeds or ([0] if args.tune or args.smoke else [0, 1, 2])
    order = [*ROWS, *TRIALS] if args.tune else list(ROWS)
    args.rows = args.rows or order
    if not args.tune and set(args.rows) & set(TRIALS):
        parser.error(f"{sorted(set(args.rows) & set(TRIALS))} are --tune trials")
    args.overrides = []
    with tempfile.TemporaryDirectory(prefix="known_gallery_smoke_") as smoke_dir:
        if args.smoke:
            args.demo, args.data = tiny_demo(Path(smoke_dir), args.data)
            args.overrides = smoke_overrides(args.demo)
            args.seeds, args.runs = args.seeds[:1], Path(smoke_dir) / "runs"
            args.out = args.out or Path(smoke_dir) / stem
        if not (args.demo / "teacher" / "last.pt").is_file():
            raise SystemExit(f"{args.demo / 'teacher'} is missing: run `make demo` first")
        out = args.out or ROOT / "benchmarks" / "results" / stem
        write_results(out, merged(out, measure(args, command.strip()), "rows", "row", order), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
