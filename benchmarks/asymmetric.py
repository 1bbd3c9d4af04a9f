"""One gallery, two networks: a student's queries against the gallery its teacher embedded (issue #31).

    python -m benchmarks.asymmetric                 # after `make demo` (its teacher and bank)
    python -m benchmarks.asymmetric --smoke         # 2 steps a row, seed 0, on its own tiny demo, to a temporary folder
    python -m benchmarks.asymmetric --tune          # the held-out trials that chose the rows' settings

The server embeds the gallery once with the big teacher; phones query it with the student. Only a student
trained into the teacher's space can do that: the paper's absolute teacher term puts it there (through a
learned projection when the sizes differ), relation-only terms do not. For every row (``ROWS``: a config a
user can run with ``embdistill distill``) and seed, this trains the student (a finished run is reused), then
scores on the 42 unseen cub100 species, every test image a query against all the others:

The rows are trials of the held-out tuning (``--tune``), as they ran there: the best one by held-out
asymmetric R@1 (the asymmetric contrastive term, its projection at 100x the head's learning rate, 16 epochs, the
epoch chosen by held-out asymmetric R@1) and the best of the first round (the same for 8 epochs, the epoch chosen
by the student's own held-out R@1) run every seed, the best absolute-term trial the first seed; each seed-0 run is
the tuning's own run, reused. The
relation-only row's seed 0 is the demo's distilled run (``runs/demo/distilled``, the same config): its 512-d
queries cannot meet the teacher's 1,280-d gallery at all, and the table says so. About 6 minutes a run here.

- **own**: the student's queries against its own gallery (its run's ``summary.yaml``);
- **asymmetric**: the student's queries against the teacher's gallery (``embdistill evaluate --gallery-model``;
  relation-only rows with ``--allow-other-space``, to show them failing);
- **asymmetric INT8**: the same with the student exported ``--space teacher --quantize int8`` and run in
  ONNX Runtime (the phone's file), against the same fp32 teacher gallery.

The teacher (EfficientNet-Lite0's ImageNet features, 1,280-d) and its bank of 2 views are the demo's
(``runs/demo``), as are the schedule and the epoch choice (best held-out R@1 over 14 train species).
Writes ``benchmarks/results/asymmetric_cub100.{md,json}``. ``--tune`` trains each trial of
``configs/cub100/asymmetric/trials/`` (seed 0) and scores its own and its asymmetric R@1 on the 14 held-out
train species only, into ``benchmarks/results/asymmetric_cub100_tuning.{md,json}``: the rows' λ and the
projection's learning rate were chosen there, never on the test species.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from benchmarks.common import ROOT, SHARED, merged, ran_by, render_results, write_results
from benchmarks.common import cell as _cell, pooled_std  # the benchmark tables' mean ± std cells and pooled std
from benchmarks.common.smoke import distilled_on, tiny_demo

DEMO = ROOT / "runs" / "demo"  # `make demo`: the teacher (DEMO/teacher), its bank, the relation-only row
# row -> (config, what it is, relation-only: its queries are in another space, every seed or the first only)
ROWS = {
    "asymmetric_contrastive_16ep_by_asym": ("configs/cub100/asymmetric/trials/contrastive_lr100_by_asym_16ep.yaml",
                                            "asymmetric contrastive λ 1, T 0.1, projection lr × 100, 16 epochs, the epoch "
                                            "chosen by held-out asymmetric R@1", False, "all"),
    "asymmetric_contrastive": ("configs/cub100/asymmetric/trials/contrastive_lr100.yaml",
                               "asymmetric contrastive λ 1, T 0.1, projection lr × 100", False, "all"),
    "absolute": ("configs/cub100/asymmetric/trials/absolute10_lr100.yaml",
                 "absolute teacher λ 10, projection lr × 100", False, "one"),
    "relative": ("configs/cub100/demo/distilled.yaml", "scale-free relative λ 10 (the demo's; relation only)", True, "one"),
}
# rows whose first seed is a run already made with the same config and seed: the demo's, the tuning's
REUSED = {"relative": ROOT / "runs" / "demo" / "distilled",
          "asymmetric_contrastive": ROOT / "runs" / "asymmetric" / "trials" / "contrastive_lr100" / "seed0",
          "asymmetric_contrastive_16ep_by_asym": ROOT / "runs" / "asymmetric" / "trials" / "contrastive_lr100_by_asym_16ep" / "seed0",
          "absolute": ROOT / "runs" / "asymmetric" / "trials" / "absolute10_lr100" / "seed0"}
# --tune: held-out trials (seed 0), each scored on the 14 held-out train species, never on the test species
TRIALS = ROOT / "configs" / "cub100" / "asymmetric" / "trials"


def train(config: str, row: str, seed: int, args: argparse.Namespace) -> Path:
    """The run directory of ``row`` at ``seed`` under ``args.runs``, trained unless its summary.yaml is already
    there (``args.overrides``: the smoke's, pointing the recipe at its tiny demo)."""
    reused = REUSED.get(row)
    if reused is not None and not args.smoke and seed == 0 and (reused / "summary.yaml").is_file():
        return reused
    out = args.runs
    run = out / row / f"seed{seed}"
    if (run / "summary.yaml").is_file():
        return run
    overrides = [*args.overrides, f"seed={seed}", f"output_dir={out}", f"name={row}/seed{seed}"]
    subprocess.run([sys.executable, "-m", "embdistill", "distill", "-c", config, "--no-progress", *overrides],
                   check=True, cwd=ROOT)
    return run


def int8_queries(run: Path, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test split embedded by the student's INT8 export in the teacher's space, and the labels."""
    import torch

    from embdistill.data import load_dataset
    from embdistill.checkpoints import checkpoint_normalization, load_checkpoint
    from embdistill.engine.batches.loaders import eval_loader
    from embdistill.deploy.export import export_checkpoint
    from embdistill.search.encoder import load_encoder

    payload = load_checkpoint(run / "best.pt")
    data = payload["config"]["data"]
    test = load_dataset(data["dataset"], data["root"], "test")
    exported = export_checkpoint(run / "best.pt", "onnx", workdir / f"{run.parent.name}_{run.name}.int8.onnx",
                                 quantize="int8", space="teacher")
    encoder = load_encoder(exported.path, threads=torch.get_num_threads())
    loader = eval_loader(test, payload["image_size"], checkpoint_normalization(payload), batch_size=128,
                         num_workers=0, resize=data.get("resize", "crop"))
    return np.concatenate([encoder(images) for images, _, _ in loader]), np.asarray(test.labels)


def teacher_gallery(teacher: str) -> tuple[np.ndarray, np.ndarray]:
    """The test split embedded by the teacher (fp32, its own size and normalisation), and the labels."""
    import torch

    from embdistill.config import from_dict
    from embdistill.checkpoints import embedder_from_checkpoint, load_checkpoint
    from embdistill.engine.scoring.embed import embed_loader
    from embdistill.engine.batches.loaders import evaluation_set

    payload = load_checkpoint(Path(teacher) / "last.pt")
    net = embedder_from_checkpoint(payload)
    values = dict(payload["config"])
    values["data"] = {**values["data"], "image_size": payload["image_size"], "num_workers": 0}
    values["train"] = {**values["train"], "select": "last"}
    gallery, labels = embed_loader(net, evaluation_set(from_dict(values), net.normalization, split="test").loader,
                                   torch.device("cpu"), progress=False)
    return gallery.numpy(), labels


def measure(args: argparse.Namespace, command: str) -> dict:
    from embdistill.checkpoints import CheckpointError
    from embdistill.engine.scoring.command import evaluate_checkpoint
    from embdistill.evaluation.metrics import retrieval_metrics

    teacher = args.demo / "teacher"
    teacher_summary = yaml.safe_load((teacher / "summary.yaml").read_text())
    gallery, gallery_labels = teacher_gallery(str(teacher))
    rows = []
    with tempfile.TemporaryDirectory(prefix="asymmetric_") as tmp:
        for row in args.rows:
            config, label, relation_only, seeds = ROWS[row]
            runs = []
            for seed in args.seeds if seeds == "all" else args.seeds[:1]:
                start = time.perf_counter()
                run = train(config, row, seed, args)
                summary = yaml.safe_load((run / "summary.yaml").read_text())
                result = {"seed": seed, "run_dir": str(run), "epoch": summary.get("epoch"),
                          "train_seconds": summary.get("train_seconds"),
                          "own_recall@1": summary["recall@1"], "own_map@r": summary["map@r"]}
                try:
                    asym = evaluate_checkpoint(run / "best.pt", gallery_model=teacher / "last.pt",
                                               num_workers=0, progress=False, allow_other_space=relation_only)
                    result.update({"asym_recall@1": asym["recall@1"], "asym_map@r": asym["map@r"],
                                   "pairing": asym["pairing"]})
                except CheckpointError as err:  # a relation-only student's queries may not even have the size
                    if not relation_only:
                        raise
                    result["refused"] = str(err)
                if not relation_only:
                    queries, labels = int8_queries(run, Path(tmp))
                    if not np.array_equal(labels, gallery_labels):
                        raise SystemExit(f"{run}: the INT8 queries' test split is not the teacher's")
                    int8 = retrieval_metrics(gallery, gallery_labels, query_embeddings=queries, query_labels=labels,
                                             paired=True, ks=(1,))
                    result.update({"int8_asym_recall@1": int8["recall@1"], "int8_asym_map@r": int8["map@r"]})
                runs.append(result)
                print(f"[asymmetric] {row} seed {seed}: own R@1 {100 * result['own_recall@1']:.1f}, asymmetric "
                      f"{_asym(result)}" + (f", INT8 {100 * result['int8_asym_recall@1']:.1f}"
                                            if "int8_asym_recall@1" in result else "")
                      + f" ({time.perf_counter() - start:.0f} s)", flush=True)
            rows.append({"row": row, "label": label, "config": config, "relation_only": relation_only, "seeds": seeds,
                         "command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                         "runs": runs})
    return {
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "teacher": str(teacher),
        "teacher_recall@1": teacher_summary["recall@1"],
        "teacher_map@r": teacher_summary["map@r"],
        "seeds": args.seeds,
        "rows": rows,
    }


def _asym(result: dict) -> str:
    return "refused" if "refused" in result else f"{100 * result['asym_recall@1']:.1f}"


def tune(args: argparse.Namespace, command: str) -> dict:
    """Every trial config (seed 0) trained, then its best and last weights scored on the held-out train species:
    the student's own R@1 and its queries' R@1 on the teacher's gallery of the same images."""
    from embdistill.engine.scoring.command import evaluate_checkpoint

    teacher = args.demo / "teacher" / "last.pt"
    trials = []
    for config in sorted(TRIALS.glob("*.yaml")):
        if args.trials and config.stem not in args.trials:
            continue
        start = time.perf_counter()
        run = train(str(config.relative_to(ROOT)), f"trials/{config.stem}", 0, args)
        scores = {}
        for weights in ("best", "last"):
            own = evaluate_checkpoint(run / f"{weights}.pt", split="validation", num_workers=0, progress=False)
            asym = evaluate_checkpoint(run / f"{weights}.pt", split="validation", gallery_model=teacher,
                                       num_workers=0, progress=False)
            scores[weights] = {"own_recall@1": own["recall@1"], "asym_recall@1": asym["recall@1"],
                               "own_map@r": own["map@r"], "asym_map@r": asym["map@r"]}
        summary = yaml.safe_load((run / "summary.yaml").read_text())
        trial = {"trial": config.stem, "config": str(config.relative_to(ROOT)), "run_dir": str(run), "command": command,
                 "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "epoch": summary.get("epoch"), "select_metric": summary.get("selected", {}).get("metric", "recall@1"),
                 "train_seconds": summary.get("train_seconds"), "last_losses": _last_losses(run), **scores}
        trials.append(trial)
        print(f"[asymmetric --tune] {config.stem}: held-out own R@1 {100 * scores['best']['own_recall@1']:.1f}, "
              f"asymmetric {100 * scores['best']['asym_recall@1']:.1f} (last epoch: "
              f"{100 * scores['last']['own_recall@1']:.1f} / {100 * scores['last']['asym_recall@1']:.1f}; "
              f"{time.perf_counter() - start:.0f} s)", flush=True)
    held_out_teacher = evaluate_checkpoint(teacher, split="validation", num_workers=0, progress=False)
    return {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "teacher": str(teacher.parent), "split": "validation", "teacher_recall@1": held_out_teacher["recall@1"],
            "trials": trials}


def _last_losses(run: Path) -> dict[str, float]:
    """The run's loss terms at its last logged step (metrics.jsonl), to see whether the absolute term was fitted."""
    import json

    not_losses = {"epoch", "step", "lr", "images_per_s", "spread"}
    last: dict[str, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "step":
            last = {k: v for k, v in record.items() if k not in not_losses and isinstance(v, (int, float))}
    return last


def tuning_markdown(result: dict) -> str:
    lines = [
        "# One gallery, two networks: held-out trials (cub100, 14 held-out train species)",
        "",
        *ran_by(result, "trials", "trial"),
        "- machine: this project's 2-core CPU machine (no GPU); seed 0, one run a trial",
        f"- teacher: `{result['teacher']}`, R@1 {100 * result['teacher_recall@1']:.1f} on the same held-out images; every "
        "trial is the demo student's schedule (MobileNetV2 at 96 px, 8 epochs unless its name says 16ep)",
        "- own = the student's queries on its own gallery, asymmetric = on the teacher's gallery of the same held-out "
        "images (R@1 %); best = the epoch the trial chose, by the held-out score its epoch column names (own R@1 = "
        "recall@1; asymmetric_recall@1 = its queries on the teacher's gallery), last = its last epoch; losses at the "
        "last logged step",
        "",
        "| trial | config | own R@1 (best) | asymmetric R@1 (best) | own (last) | asymmetric (last) | epoch (chosen by) | losses at the end | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result["trials"]:
        b, last = t["best"], t["last"]
        losses = ", ".join(f"{k} {v:.3f}" for k, v in sorted(t["last_losses"].items()))
        lines.append(f"| {t['trial']} | `{t['config']}` | {100 * b['own_recall@1']:.1f} | {100 * b['asym_recall@1']:.1f} | "
                     f"{100 * last['own_recall@1']:.1f} | {100 * last['asym_recall@1']:.1f} | {t['epoch']} "
                     f"({t.get('select_metric', 'recall@1')}) | {losses} | "
                     f"{t['train_seconds']} |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    lines = [
        "# One gallery, two networks: the student's queries, the teacher's gallery (cub100)",
        "",
        *ran_by(result, "rows", "row"),
        "- machine: this project's 2-core CPU machine (no GPU)",
        f"- teacher: `{result['teacher']}` (EfficientNet-Lite0's ImageNet features, 1,280-d, 160 px): R@1 "
        f"{100 * result['teacher_recall@1']:.1f}, MAP@R {100 * result['teacher_map@r']:.1f} on its own gallery",
        "- student: MobileNetV2 from ImageNet at 96 px, 512-d, the demo's schedule (8 epochs unless the row says 16; the "
        "epoch chosen on 14 held-out train species by the student's own R@1 unless the row says asymmetric R@1); the 42 "
        "unseen species score, every image a query against all the others",
        "- own = student queries, student gallery; asymmetric = student queries, teacher gallery (`embdistill "
        "evaluate --gallery-model`); INT8 = the student's `export --space teacher --quantize int8` file in ONNX "
        "Runtime, against the same gallery. Mean ± std over seeds " + ", ".join(map(str, result["seeds"])) + "; gain = "
        "asymmetric − own R@1, with the pooled std of the two; rows with one value are one run (seed "
        + str(result["seeds"][0]) + ")",
        "",
        "| row | config | own R@1 | asymmetric R@1 | gain (pooled std) | asymmetric INT8 R@1 | own MAP@R | asymmetric MAP@R |",
        "|---|---|---|---|---|---|---|---|",
    ]
    refusals = []
    for row in result["rows"]:
        runs = row["runs"]
        own = [100 * r["own_recall@1"] for r in runs]
        own_map = _cell([100 * r["own_map@r"] for r in runs])
        if any("refused" in r for r in runs):
            refusals += [f"- {row['row']} seed {r['seed']}: {r['refused']}" for r in runs if "refused" in r]
            lines.append(f"| {row['label']} | `{row['config']}` | {_cell(own)} | refused: another space (below) | — | — | "
                         f"{own_map} | — |")
            continue
        asym = [100 * r["asym_recall@1"] for r in runs]
        pooled = pooled_std(own, asym)
        gain = statistics.fmean(asym) - statistics.fmean(own)
        int8 = [100 * r["int8_asym_recall@1"] for r in runs if "int8_asym_recall@1" in r]
        lines.append(
            f"| {row['label']} | `{row['config']}` | {_cell(own)} | {_cell(asym)} | {gain:+.1f}"
            + (f" ({pooled:.1f})" if pooled is not None else "") + f" | {_cell(int8) if int8 else '—'} | "
            f"{own_map} | {_cell([100 * r['asym_map@r'] for r in runs])} |")
    if refusals:
        lines += ["", "Refused by `embdistill evaluate --gallery-model` (even with `--allow-other-space`):", "", *refusals]
    lines += ["", "Per run (R@1 %, epoch chosen on held-out species, training seconds):", ""]
    for row in result["rows"]:
        for r in row["runs"]:
            int8 = f", INT8 {100 * r['int8_asym_recall@1']:.1f}" if "int8_asym_recall@1" in r else ""
            lines.append(f"- {row['row']} seed {r['seed']}: own {100 * r['own_recall@1']:.1f}, asymmetric "
                         f"{_asym(r)}{int8}; epoch {r['epoch']}, {r['train_seconds']} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "asymmetric", help="where the runs go")
    parser.add_argument("--out", type=Path, help="results path without suffix (default: benchmarks/results/asymmetric_cub100)")
    parser.add_argument("--render", action="store_true",
                        help="only write the .md again from the .json (its paths made repository-relative)")
    parser.add_argument("--demo", type=Path, default=DEMO, help="the `make demo` folder whose teacher and bank the rows use")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "cub100", help="--smoke: the CUB root it takes a few species of")
    parser.add_argument("--smoke", action="store_true",
                        help="2 training steps a row, seed 0, on a tiny demo of its own, all in a temporary folder")
    parser.add_argument("--tune", action="store_true",
                        help=f"the held-out trials ({TRIALS.relative_to(ROOT)}/*.yaml, seed 0) instead of the rows; "
                             "writes benchmarks/results/asymmetric_cub100_tuning.{json,md}")
    parser.add_argument("--trials", nargs="+", help="--tune: only these trials (config stems)")
    args = parser.parse_args(argv)
    stem = "asymmetric_cub100_tuning" if args.tune else "asymmetric_cub100"
    if args.render:
        render_results(args.out or ROOT / "benchmarks" / "results" / stem, tuning_markdown if args.tune else markdown)
        return 0
    command = "python -m benchmarks.asymmetric " + " ".join(map(shlex.quote, argv if argv is not None else sys.argv[1:]))
    args.overrides = []
    with tempfile.TemporaryDirectory(prefix="asymmetric_smoke_") as smoke_dir:
        if args.smoke:
            args.demo, data = tiny_demo(Path(smoke_dir), args.data)
            args.overrides = distilled_on(args.demo, data)
            args.seeds, args.runs = args.seeds[:1], Path(smoke_dir) / "runs"
            args.out = args.out or Path(smoke_dir) / stem
        if not (args.demo / "teacher" / "last.pt").is_file():
            raise SystemExit(f"{args.demo / 'teacher'} is missing: run `make demo` first (it scores the teacher and "
                             "fills its bank)")
        out = args.out or ROOT / "benchmarks" / "results" / stem
        if args.tune:
            write_results(out, merged(out, tune(args, command.strip()), "trials", "trial"), tuning_markdown)
        else:
            write_results(out, merged(out, measure(args, command.strip()), "rows", "row", list(ROWS)), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
