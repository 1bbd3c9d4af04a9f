"""Label-free distillation on birds, at the demo's scale (issue #30): what the teacher alone teaches.

    python -m benchmarks.label_free            # after `make demo` (its teacher, student and distilled runs)
    python -m benchmarks.label_free --smoke    # 2 steps a run, on its own tiny demo, to a temporary folder

Rows (``ROWS``: configs a user can run with ``embdistill distill``), one seed each, beside the demo's own runs
(``runs/demo``: the student alone, the relative teacher with labels, the teacher):

- ``train_photos``: the 58 training species' photos as a folder with no labels (symbolic links, in one flat
  folder, made here); relaxed contrastive loss only, random batches, the epoch chosen by knn_agreement@10 on a
  quarter of the photos held out. The test species are never seen.
- ``test_gallery``: the same on the 42 test species' photos, the gallery the student will search, without
  their labels: **transductive**.
- ``labelled_by_agreement``: the demo's distilled run (labels, relative teacher) choosing its epoch by
  knn_agreement@10 on its 14 held-out species, where R@1 is scored too: how well the label-free score tracks
  R@1 on labelled held-out classes (rank correlation over epochs; the R@1 of the epoch each one picks).
- ``labelled_relaxed``: the demo's distilled run with the relaxed contrastive loss in place of the relative
  teacher, labels and metric loss kept, the epoch chosen by held-out R@1.

``--rows`` runs some rows and keeps the others' figures from the committed JSON (each row records its command).

Every label-free student is then scored on the 42 test species with labels (``embdistill evaluate``).
Writes ``benchmarks/results/label_free_cub100.{md,json}``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from benchmarks.common import ROOT, SHARED, cell, merged, ran_by, render_results, spearman, write_results
from benchmarks.common.smoke import SMALL, distilled_on, tiny_demo

DEMO = ROOT / "runs" / "demo"  # `make demo`: the teacher, the student alone, the relative teacher with labels
# row -> (config, kind): "train" / "test", the split whose photos a label-free row trains on (linked, no labels);
# "tracking", a labelled run whose knn_agreement curve is compared with its held-out R@1; "labelled", a labelled run
ROWS = {
    "train_photos": ("configs/cub100/label_free/train_photos.yaml", "train"),
    "test_gallery": ("configs/cub100/label_free/test_gallery.yaml", "test"),
    "labelled_by_agreement": ("configs/cub100/label_free/labelled_selected_by_agreement.yaml", "tracking"),
    "labelled_relaxed": ("configs/cub100/label_free/labelled_relaxed.yaml", "labelled"),
}
# row -> (labels read, images distilled on, what chose its epoch): the table's columns
WHAT = {"train_photos": ("never", "58 training species' photos, no labels", "knn_agreement@10"),
        "test_gallery": ("never", "**the 42 test species' photos (transductive)**", "knn_agreement@10"),
        "labelled_by_agreement": ("yes", "44 training species", "knn_agreement@10"),
        "labelled_relaxed": ("yes", "44 training species", "held-out R@1")}


def link_photos(data: Path, split: str, folder: Path) -> int:
    """``folder``: one flat folder of symbolic links to every image of the CUB root ``data``'s ``split``, no class
    folders."""
    from embdistill.data import load_dataset

    paths = load_dataset("cub200", str(data), split).paths
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        link = folder / f"{i:05d}{Path(path).suffix.lower()}"
        if not link.is_symlink():
            link.symlink_to(Path(path).resolve())
    return len(paths)


def distill(config: str, out: Path, overrides: list[str], seed: int = 0) -> Path:
    """The run of ``config`` at ``seed`` (seed 0 under the config's own name), trained unless it finished."""
    cfg = yaml.safe_load((ROOT / config).read_text())
    name = cfg.get("name") or Path(config).stem
    if seed:
        name = f"{name}_seed{seed}"
        overrides = [*overrides, f"seed={seed}", f"name={name}"]
    run = out / name
    if not (run / "summary.yaml").is_file():
        subprocess.run([sys.executable, "-m", "embdistill", "distill", "-c", config, "--no-progress",
                        f"output_dir={out}", *overrides], check=True, cwd=ROOT)
    return run


def measure(args: argparse.Namespace, command: str) -> dict:
    from embdistill.engine.scoring.command import evaluate_checkpoint

    rows = []
    for row in args.rows:
        config, split = ROWS[row]
        if split == "labelled":  # every seed, each scored on the test species by its own run (eval.split: test)
            overrides = distilled_on(args.demo, args.data) if args.smoke else []
            runs = []
            for seed in args.seeds:
                run = distill(config, args.runs, overrides, seed)
                summary = yaml.safe_load((run / "summary.yaml").read_text())
                runs.append({"seed": seed, "run_dir": str(run), "epoch": summary.get("epoch"),
                             "train_seconds": summary.get("train_seconds"),
                             "validation_curve": summary.get("validation_curve") or [],
                             "recall@1": summary["recall@1"], "map@r": summary["map@r"]})
            result = {"row": row, "config": config, "transductive": False,
                      "recall@1": statistics.fmean(r["recall@1"] for r in runs),
                      "map@r": statistics.fmean(r["map@r"] for r in runs), "runs": runs}
        elif split in ("train", "test"):
            folder = args.runs / "photos" / split  # never a run's own folder: its outputs would become photos
            count = link_photos(args.data, split, folder)
            overrides = [f"data.root={folder}", f"distill.bank={folder}.bank"]
            if args.smoke:  # 16 random photos a batch: the tiny demo's 64 a split, a quarter held out
                overrides = [*SMALL, "train.epochs=1", "train.batch_size=16", f"distill.teacher={args.demo / 'teacher'}",
                             *overrides]
            runs = []  # a label-free row: every seed, each scored on the test species with labels
            for seed in args.seeds:
                run = distill(config, args.runs, overrides, seed)
                summary = yaml.safe_load((run / "summary.yaml").read_text())
                scored = evaluate_checkpoint(run / "best.pt", dataset="cub200", root=str(args.data), split="test",
                                             num_workers=0, progress=False)
                runs.append({"seed": seed, "run_dir": str(run), "epoch": summary.get("epoch"),
                             "train_seconds": summary.get("train_seconds"),
                             "validation_curve": summary.get("validation_curve") or [],
                             "recall@1": scored["recall@1"], "map@r": scored["map@r"],
                             "selected_agreement": summary.get("selected", {}).get("validation")})
            result = {"row": row, "config": config, "transductive": split == "test", "photos": count,
                      "recall@1": statistics.fmean(r["recall@1"] for r in runs),
                      "map@r": statistics.fmean(r["map@r"] for r in runs), "runs": runs}
        else:
            run = distill(config, args.runs, distilled_on(args.demo, args.data) if args.smoke else [])
            summary = yaml.safe_load((run / "summary.yaml").read_text())
            curve = summary.get("validation_curve") or []
            result = {"row": row, "config": config, "run_dir": str(run), "epoch": summary.get("epoch"),
                      "train_seconds": summary.get("train_seconds"), "validation_curve": curve,
                      "transductive": False}
            r1 = [e["recall@1"] for e in curve]
            agree = [e["knn_agreement@10"] for e in curve]
            by_agreement = max(range(len(curve)), key=lambda i: agree[i])
            by_r1 = max(range(len(curve)), key=lambda i: r1[i])
            result.update({
                "recall@1": summary["recall@1"], "map@r": summary["map@r"],
                "spearman_r1_agreement": spearman(r1, agree) if len(curve) > 2 else None,
                "epoch_by_agreement": curve[by_agreement]["epoch"], "epoch_by_r1": curve[by_r1]["epoch"],
                "held_out_r1_at_agreement_epoch": r1[by_agreement], "held_out_r1_best": r1[by_r1],
            })
        result.update(command=command, date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
        rows.append(result)
        print(f"[label_free] {row}: test R@1 {100 * result['recall@1']:.1f}", flush=True)
    demo = {name: yaml.safe_load((args.demo / name / "summary.yaml").read_text())
            for name in ("student", "distilled", "teacher")}
    return {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "demo": {name: {"recall@1": s["recall@1"], "map@r": s["map@r"], "train_seconds": s.get("train_seconds")}
                 for name, s in demo.items()},
        "rows": rows,
    }


def _seeds_line(result: dict) -> str:
    """Which seeds the label-free rows ran (a row with several: mean ± std; the gap closed is the mean's)."""
    seeds = sorted({run["seed"] for r in result["rows"] for run in r.get("runs", [])}) or [0]
    if len(seeds) == 1:
        return "one seed (0) a row"
    return (f"the rows run over seeds {', '.join(map(str, seeds))} (mean ± std; gap closed from the mean; epochs and "
            "training seconds per seed) list one epoch a seed, the other rows one seed (0)")


def markdown(result: dict) -> str:
    demo = result["demo"]
    alone, teacher = 100 * demo["student"]["recall@1"], 100 * demo["teacher"]["recall@1"]

    def closed(r1: float) -> str:
        return f"{100 * (100 * r1 - alone) / (teacher - alone):.0f}%"

    lines = [
        "# Label-free distillation on birds, at the demo's scale (cub100)",
        "",
        *ran_by(result, "rows", "row"),
        "- machine: this project's 2-core CPU machine (no GPU); " + _seeds_line(result),
        "- student: MobileNetV2 from ImageNet at 96 px, 512-d; teacher: EfficientNet-Lite0's ImageNet features at 160 px "
        "(`runs/demo/teacher`); every student scored on the 42 unseen test species, every image a query against the others",
        f"- gap closed = (R@1 − the student alone's {alone:.1f}) / (the teacher's {teacher:.1f} − {alone:.1f})",
        "",
        "| row | labels read | images distilled on | test R@1 | MAP@R | gap closed | epoch (chosen by) | train s |",
        "|---|---|---|---|---|---|---|---|",
        f"| student alone (`runs/demo/student`) | yes | 44 training species | {alone:.1f} | "
        f"{100 * demo['student']['map@r']:.1f} | — | held-out R@1 | {demo['student']['train_seconds']} |",
        f"| relative teacher, λ 10 (`runs/demo/distilled`) | yes | 44 training species | "
        f"{100 * demo['distilled']['recall@1']:.1f} | {100 * demo['distilled']['map@r']:.1f} | "
        f"{closed(demo['distilled']['recall@1'])} | held-out R@1 | {demo['distilled']['train_seconds']} |",
    ]
    for r in result["rows"]:
        labels, images, chosen_by = WHAT[r["row"]]
        runs = r.get("runs") or [r]
        epochs = ", ".join(str(run["epoch"]) for run in runs)
        seconds = ", ".join(str(run["train_seconds"]) for run in runs)
        lines.append(f"| {r['row']} (`{r['config']}`) | {labels} | {images} | {cell([100 * x['recall@1'] for x in runs])} | "
                     f"{cell([100 * x['map@r'] for x in runs])} | {closed(r['recall@1'])} | {epochs} ({chosen_by}) | "
                     f"{seconds} |")
    lines.append(f"| teacher (`runs/demo/teacher`) | — | ImageNet | {teacher:.1f} | {100 * demo['teacher']['map@r']:.1f} | — | — | — |")
    tracked = [r for r in result["rows"] if r["row"] == "labelled_by_agreement"]
    if tracked:
        r = tracked[0]
        rho = r["spearman_r1_agreement"]
        lines += [
            "",
            "## Does knn_agreement@10 track R@1 on labelled held-out classes?",
            "",
            f"`labelled_by_agreement`, over its {len(r['validation_curve'])} epochs on the 14 held-out species: Spearman "
            f"rank correlation of held-out R@1 with knn_agreement@10 = {'n/a' if rho is None else f'{rho:.2f}'}; "
            f"knn_agreement picks epoch {r['epoch_by_agreement']} (held-out R@1 {100 * r['held_out_r1_at_agreement_epoch']:.1f}), "
            f"R@1 picks epoch {r['epoch_by_r1']} ({100 * r['held_out_r1_best']:.1f}).",
            "",
            "| epoch | held-out R@1 | knn_agreement@10 |",
            "|---:|---:|---:|",
            *[f"| {e['epoch']} | {100 * e['recall@1']:.1f} | {e['knn_agreement@10']:.3f} |" for e in r["validation_curve"]],
        ]
    for r in result["rows"]:
        curve = r["runs"][0]["validation_curve"] if r["row"] in ("train_photos", "test_gallery") else []
        if curve:
            lines += ["", f"`{r['row']}`: knn_agreement@10 on its held-out photos by epoch: "
                      + ", ".join(f"{e['knn_agreement@10']:.3f}" for e in curve)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds of the label-free rows (seed 0's run keeps the config's name; others get _seedN)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "label_free_cub100", help="where the runs go")
    parser.add_argument("--out", type=Path, help="results path without suffix (default: benchmarks/results/label_free_cub100)")
    parser.add_argument("--render", action="store_true",
                        help="only write the .md again from the .json (its paths made repository-relative)")
    parser.add_argument("--demo", type=Path, default=DEMO, help="the `make demo` folder whose runs the table compares with")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cub100", help="the CUB root (cub100)")
    parser.add_argument("--smoke", action="store_true",
                        help="2 training steps a run, on a tiny demo of its own (a few species of --data), all in a temporary folder")
    args = parser.parse_args(argv)
    if args.render:
        render_results(args.out or ROOT / "benchmarks" / "results" / "label_free_cub100", markdown)
        return 0
    command = "python -m benchmarks.label_free " + " ".join(map(shlex.quote, argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="label_free_smoke_") as smoke_dir:
        if args.smoke:
            args.demo, args.data = tiny_demo(Path(smoke_dir), args.data)
            args.runs = Path(smoke_dir) / "runs"
            args.out = args.out or Path(smoke_dir) / "label_free_cub100"
        for name in ("teacher", "student", "distilled"):
            if not (args.demo / name / "summary.yaml").is_file():
                raise SystemExit(f"{args.demo / name} is missing: run `make demo` first")
        out = args.out or ROOT / "benchmarks" / "results" / "label_free_cub100"
        os.makedirs(args.runs, exist_ok=True)
        write_results(out, merged(out, measure(args, command.strip()), "rows", "row", list(ROWS)), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
