"""`embdistill report`: one table and a few pictures comparing trained runs.

Per run: size (parameters, mult-adds at its input size), speed (CPU images/s), quality
(Recall@K, MAP@R, NMI), training time; then Recall@K curves side by side and a grid of
test queries with their nearest neighbours. Everything expensive is cached in the run
directory and keyed by its checkpoint, so a report over many runs stays cheap:

* ``test_embeddings.npz``: the evaluation split embedded once (embeddings, labels, paths;
  engine/persist/test_embeddings.py, usually written by the trainer);
* ``stats.json``: parameters, mult-adds, CPU images/s and NMI;
* ``retrieval_grid.png``: redrawn from the cached embeddings (milliseconds).

``write_run_report``, the step after training, lives here too. The pictures are drawn in
``plots.py``; parameters, mult-adds and CPU images/s are measured in ``modelstats.py``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from embdistill.checkpoints import embedder_from_checkpoint, load_checkpoint
from embdistill.engine.compute.device import resolve_device
from embdistill.engine.persist.test_embeddings import Embedded, checkpoint_key, load_test_embeddings, save_test_embeddings
from embdistill.report.modelstats import count_mflops, count_parameters, cpu_throughput

__all__ = [
    "add_subcommands",
    "choose_queries",
    "nearest_neighbours",
    "run_stats",
    "save_test_embeddings",
    "test_embeddings",
    "write_report",
    "write_retrieval_grid",
    "write_run_report",
]

STATS_FILE = "stats.json"
GRID_FILE = "retrieval_grid.png"
CPU_BATCH, CPU_THREADS, CPU_REPEATS = 64, 2, 3  # one setting for every run, so speeds compare
GRID_QUERIES, GRID_NEIGHBOURS, GRID_SEED = 6, 5, 0


# --------------------------------------------------------------------------- test embeddings


def _embedded(run_dir: Path, device: str = "auto", root: str | None = None, progress: bool = False) -> Embedded:
    """The run's evaluation split embedded by its checkpoint (best.pt or last.pt): from the cache, or embedded now and cached."""
    cached = load_test_embeddings(run_dir)
    if cached is not None:
        return cached
    from embdistill.config import from_dict
    from embdistill.engine.scoring.embed import embed_loader
    from embdistill.engine.batches.loaders import evaluation_set

    payload = load_checkpoint(run_dir)
    values = dict(payload.get("config") or {})
    if root:
        values["data"] = {**(values.get("data") or {}), "root": root}
    cfg = from_dict(values)
    dev = resolve_device(device)
    model = embedder_from_checkpoint(payload).to(dev)
    # Embedded the way the run scored them: same split, size, batching, and degraded too for cross-quality runs.
    evaluated = evaluation_set(cfg, model.normalization)
    embeddings, labels = embed_loader(model, evaluated.loader, dev, progress)
    items = evaluated.items
    save_test_embeddings(run_dir, embeddings, labels, items.paths, items.class_names)
    return Embedded(embeddings.numpy(), labels, [str(Path(p).resolve()) for p in items.paths], items.class_names)


def test_embeddings(
    run_dir: str | Path, device: str = "auto", root: str | None = None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(embeddings (N, D) float32, labels (N,), image paths) of the run's evaluation split.

    Computed once from the run's checkpoint (best.pt when it chose an epoch, else
    last.pt) and the dataset named in its config, then read from
    ``RUN_DIR/test_embeddings.npz`` until that changes. ``root`` overrides the
    recorded dataset root (e.g. a relative root read from another directory).
    """
    e = _embedded(Path(run_dir), device, root, progress)
    return e.embeddings, e.labels, e.paths


test_embeddings.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test


# --------------------------------------------------------------------------- retrieval grid


def choose_queries(labels: np.ndarray | Sequence[int], n: int = GRID_QUERIES, seed: int = GRID_SEED) -> np.ndarray:
    """Indices of ``n`` queries from classes spread evenly over the label range, one image
    per class drawn with ``seed``: the same run always shows the same queries, and
    different runs on the same split show the same ones too."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if n < 1 or len(classes) == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    spread = np.linspace(0, len(classes) - 1, num=min(n, len(classes))).round().astype(int)
    order = list(classes[spread]) + list(rng.permutation(classes))  # extra queries beyond one per class
    members = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    picked: list[int] = []
    for c in order * (1 + n // max(1, len(classes))):
        if len(picked) == n:
            break
        if members[c]:
            picked.append(int(members[c].pop()))
    return np.array(picked, dtype=np.int64)


def nearest_neighbours(embeddings: np.ndarray | torch.Tensor, queries: np.ndarray | Sequence[int], k: int = GRID_NEIGHBOURS) -> np.ndarray:
    """(len(queries), k) indices of each query's most cosine-similar items, itself excluded
    (the same ranking as the Recall@K evaluation)."""
    emb = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float32), dim=1)
    q = torch.as_tensor(np.asarray(queries, dtype=np.int64))
    k = min(k, len(emb) - 1)
    sims = emb[q] @ emb.T
    sims[torch.arange(len(q)), q] = -torch.inf
    return sims.topk(k, dim=1).indices.numpy()


def write_retrieval_grid(
    run_dir: str | Path, n_queries: int = GRID_QUERIES, k: int = GRID_NEIGHBOURS, seed: int = GRID_SEED,
    device: str = "auto", root: str | None = None, progress: bool = False,
) -> Path:
    """``RUN_DIR/retrieval_grid.png``: a few test queries and their top-k neighbours."""
    from embdistill.report.plots import plot_retrieval_grid

    run_dir = Path(run_dir)
    e = _embedded(run_dir, device, root, progress)
    queries = choose_queries(e.labels, n_queries, seed)
    neighbours = nearest_neighbours(e.embeddings, queries, k)
    return plot_retrieval_grid(
        [e.paths[i] for i in queries],
        e.labels[queries],
        [[e.paths[j] for j in row] for row in neighbours],
        e.labels[neighbours],
        run_dir / GRID_FILE,
        class_names=e.class_names or None,
    )


# --------------------------------------------------------------------------- per-run stats


def run_stats(
    run_dir: str | Path, remeasure: bool = False, device: str = "auto", root: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Size, speed and NMI of a run's checkpoint, cached in ``RUN_DIR/stats.json``.

    ``remeasure`` times the CPU throughput again even when cached: speeds measured at
    different times or on different machines do not compare.
    """
    from embdistill.evaluation.metrics import nmi_kmeans

    run_dir = Path(run_dir)
    path = run_dir / STATS_FILE
    key = checkpoint_key(run_dir)
    if path.is_file() and not remeasure:
        try:
            cached = json.loads(path.read_text())
            if cached.get("checkpoint") == key:
                return cached
        except json.JSONDecodeError:
            pass
    payload = load_checkpoint(run_dir)
    model = embedder_from_checkpoint(payload)
    size = int(payload["image_size"])
    label_free = _label_free(payload)
    e = None if label_free else _embedded(run_dir, device, root, progress)
    mc = payload["model_config"]
    stats = {
        "backbone": mc["backbone"],
        "backbone_args": mc.get("backbone_args", {}),
        "embedding_dim": int(model.dim),
        "image_size": size,
        "parameters": count_parameters(model),
        "mult_adds_millions": round(count_mflops(model, size), 2),
        "cpu_images_per_s": round(cpu_throughput(model, size, CPU_BATCH, CPU_THREADS, CPU_REPEATS), 1),
        "cpu_batch_size": CPU_BATCH,
        "cpu_threads": CPU_THREADS,
        # NMI needs classes: none for a label-free run (data.dataset: photos), whose every photo is its own.
        "nmi": None if e is None else round(nmi_kmeans(e.embeddings, e.labels, seed=0), 4),
        "checkpoint": key,
    }
    path.write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def write_run_report(run_dir: str | Path, device: str = "auto", root: str | None = None, progress: bool = False) -> dict[str, Any]:
    """What a run leaves for people once it has trained: ``loss_curve.png``, ``stats.json`` and ``retrieval_grid.png``.

    The step after ``engine.train.run`` (the CLI, the demo and the benchmark call it).
    Reads the trainer's ``test_embeddings.npz`` (embeds the evaluation split only when
    it is missing or stale). Returns the stats.
    """
    from embdistill.report.plots import plot_training_curves

    if (Path(run_dir) / "metrics.jsonl").is_file():
        plot_training_curves(Path(run_dir))
    stats = run_stats(run_dir, device=device, root=root, progress=progress)
    if not _label_free(load_checkpoint(run_dir)):  # no classes to frame the neighbours green or red by
        write_retrieval_grid(run_dir, device=device, root=root, progress=progress)
    return stats


def _label_free(payload: dict[str, Any]) -> bool:
    """Whether a checkpoint's run trained on a dataset without labels (``photos``): no retrieval metrics, NMI or grid."""
    from embdistill.data.datasets import is_label_free

    return is_label_free(((payload.get("config") or {}).get("data") or {}).get("dataset"))


# --------------------------------------------------------------------------- the report


def _retrieval(run_dir: Path, summary: dict[str, Any], device: str, root: str | None, progress: bool) -> dict[str, float]:
    """Recall@K and MAP@R as the run reported them; scored from the cache if it never finished."""
    scores = {k: float(v) for k, v in summary.items() if k.startswith("recall@") or k == "map@r"}
    if scores:
        return scores
    from embdistill.evaluation.metrics import retrieval_metrics

    e = _embedded(run_dir, device, root, progress)
    ks = load_checkpoint(run_dir).get("config", {}).get("eval", {}).get("ks", [1, 2, 4, 8])
    return {k: v for k, v in retrieval_metrics(e.embeddings, e.labels, ks=ks, r_precision=False).items()}


def _names(run_dirs: list[Path]) -> list[str]:
    names = [d.name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([d.parent for d in run_dirs]))
    return [d.relative_to(common).as_posix() for d in run_dirs]


def _model_name(stats: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in (stats.get("backbone_args") or {}).items())
    return f"{stats['backbone']} ({args})" if args else stats["backbone"]


def _row(name: str, run_dir: Path, remeasure: bool, device: str, root: str | None, progress: bool) -> dict[str, Any]:
    summary_path = run_dir / "summary.yaml"
    summary = (yaml.safe_load(summary_path.read_text()) or {}) if summary_path.is_file() else {}
    stats = run_stats(run_dir, remeasure, device, root, progress)
    label_free = bool(summary.get("label_free"))  # scored by knn_agreement alone: no classes to score retrieval by
    return {
        "run": name,
        "model": _model_name(stats),
        "parameters": stats["parameters"],
        "mult_adds_millions": stats["mult_adds_millions"],
        "embedding_dim": stats["embedding_dim"],
        "image_size": stats["image_size"],
        "split": summary.get("split"),
        **({} if label_free else _retrieval(run_dir, summary, device, root, progress)),
        **{k: float(v) for k, v in summary.items() if k.startswith("knn_agreement@")},
        "label_free": label_free or None,
        "nmi": stats["nmi"],
        "train_seconds": summary.get("train_seconds"),
        "cpu_images_per_s": stats["cpu_images_per_s"],
        "run_dir": str(run_dir),
        "collapse_warning": summary.get("collapse_warning"),
        # Test images among its unlabelled training images (distill.semi_supervised.folder): its scores are transductive.
        "transductive": summary.get("transductive_test_images", 0) if summary.get("transductive") else None,
        # Not table columns: the run's own section shows them (_selection_lines).
        "epoch": summary.get("epoch"),
        "selected": summary.get("selected"),
        "validation_curve": summary.get("validation_curve"),
    }


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    ks = sorted({int(k.split("@")[1]) for r in rows for k in r if k.startswith("recall@")})
    agreement = sorted({k for r in rows for k in r if k.startswith("knn_agreement@")})
    transductive = ["transductive"] if any(r.get("transductive") is not None for r in rows) else []
    return [
        "run", "model", "parameters", "mult_adds_millions", "embedding_dim", "image_size", "split",
        *[f"recall@{k}" for k in ks], "map@r", "nmi", *agreement, "train_seconds", "cpu_images_per_s", *transductive, "run_dir",
    ]


_HEADINGS = {
    "run": "Run", "model": "Model", "parameters": "Params (M)", "mult_adds_millions": "Mult-Adds (M)",
    "embedding_dim": "Dim", "image_size": "Input px", "map@r": "MAP@R", "nmi": "NMI",
    "train_seconds": "Train time", "cpu_images_per_s": "CPU img/s",
}


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if column.startswith(("recall@", "knn_agreement@")) or column in ("map@r", "nmi"):
        return f"{100 * float(value):.1f}"
    if column == "parameters":
        return f"{value / 1e6:.2f}"
    if column == "mult_adds_millions":
        return f"{value:.1f}"
    if column == "train_seconds":
        s = float(value)
        return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"
    if column == "cpu_images_per_s":
        return f"{value:.0f}"
    return str(value)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return round(value, 6) if isinstance(value, float) else value


def _markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    shown = [c for c in columns if c not in ("run_dir", "split", "transductive")]
    head = [_HEADINGS.get(c, c.replace("recall@", "R@").replace("knn_agreement@", "kNN agree@")) for c in shown]
    right = [c not in ("run", "model") for c in shown]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    for row in rows:
        cells = [_cell(c, row.get(c)) for c in shown]
        if row.get("transductive") is not None:  # the run's name carries the mark, so no number is read without it
            cells[0] += " (transductive)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _split_warning(rows: list[dict[str, Any]]) -> list[str]:
    """Numbers on different splits (test vs held-out validation classes) do not compare."""
    if len({r.get("split") for r in rows}) <= 1:
        return []
    where = ", ".join(f"{r['run']}: {r.get('split') or 'unknown'}" for r in rows)
    return ["", f"**Note:** these runs were scored on different splits ({where}); their quality numbers do not compare."]


def _transductive_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Runs that trained on test images without their labels: their test scores are transductive."""
    notes = [f"**Transductive:** {r['run']} trained on {r['transductive']} test image(s) without their labels "
             "(`distill.semi_supervised.folder`); its test scores do not compare with inductive runs'."
             for r in rows if r.get("transductive") is not None]
    return ["", *notes] if notes else []


def _collapse_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """Runs whose embeddings collapsed towards one point during training (evaluation/collapse.py)."""
    warnings = [f"**Warning:** {r['run']}: {r['collapse_warning']}" for r in rows if r.get("collapse_warning")]
    return ["", *warnings] if warnings else []


def _selection_lines(row: dict[str, Any]) -> list[str]:
    """Which epoch's weights the numbers are of, and the held-out curve they were chosen on (if any)."""
    selected, curve = row.get("selected"), row.get("validation_curve") or []
    held_out = "held-out photos" if row.get("label_free") else "held-out train classes"
    lines = []
    if selected:
        early = ", stopped early" if selected.get("stopped_early") else ""
        metric = _HEADINGS.get(selected["metric"], selected["metric"].replace("recall@", "R@"))
        lines += [f"Scored with the weights of epoch {row['epoch']} of {selected['epochs_trained']}{early}: the best "
                  f"{metric} on the {held_out} ({_cell(selected['metric'], selected['validation'])}).", ""]
    if curve:
        keys = [k for k in curve[0] if k.startswith(("recall@", "knn_agreement@")) or k == "map@r"]
        lines += ["| Epoch | " + " | ".join(_HEADINGS.get(k, k.replace("recall@", "R@")) for k in keys) + " |",
                  "|" + "---:|" * (1 + len(keys))]
        for point in curve:
            mark = " (scored)" if selected and point["epoch"] == row["epoch"] else ""
            lines.append(f"| {point['epoch']}{mark} | " + " | ".join(_cell(k, point.get(k)) for k in keys) + " |")
        lines += ["", f"{held_out.capitalize()} (`data.validation_classes`) after each evaluated epoch, in %.", ""]
    return lines


def _link(target: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix()


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    remeasure: bool = False,
    device: str = "auto",
    root: str | None = None,
    progress: bool = False,
) -> Path:
    """``report.md``, ``report.csv`` and ``recall_at_k.png`` in ``out_dir`` (default: the
    runs' common parent), plus each run's ``retrieval_grid.png``. Returns report.md's path."""
    from embdistill.report.plots import plot_recall_curves, plot_training_curves

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("write_report needs at least one run directory")
    out = Path(out_dir) if out_dir is not None else Path(os.path.commonpath([d.resolve().parent for d in dirs]))
    out.mkdir(parents=True, exist_ok=True)
    rows = [_row(name, d, remeasure, device, root, progress) for name, d in zip(_names(dirs), dirs)]
    columns = _columns(rows)

    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c)) for c in columns})

    recall_png = plot_recall_curves({r["run"]: {k: v for k, v in r.items() if k.startswith("recall@")} for r in rows}, out / "recall_at_k.png")
    lines = [
        "# Embedding report",
        "",
        _markdown_table(rows, columns),
        "",
        "R@K, MAP@R (Musgrave et al., 2020) on each run's evaluation split and NMI of k-means "
        "(as many clusters as classes) on the same embeddings, in %. Mult-Adds: multiply-accumulates "
        "of one image at the run's input size, convolutions and linear layers only, as in the "
        "MobileNet papers. CPU img/s: inference, batch "
        f"{CPU_BATCH}, {CPU_THREADS} threads, median of {CPU_REPEATS} "
        "(compare only numbers measured on the same machine; `--remeasure` times every run again).",
        *(["", "kNN agree@k: the share of each held-out image's k nearest neighbours under the teacher that the "
               "run also ranks in its k nearest (`train.select_metric: knn_agreement@k`), in %; label-free runs "
               "(`data.dataset: photos`) have no classes, so no R@K, MAP@R or NMI."]
          if any(k.startswith("knn_agreement@") for r in rows for k in r) else []),
        *_split_warning(rows),
        *_transductive_notes(rows),
        *_collapse_warnings(rows),
        "",
        "## Recall@K",
        "",
        f"![Recall@K]({_link(recall_png, out)})",
    ]
    for row, d in zip(rows, dirs):
        lines += ["", f"## {row['run']}", ""]
        curve = d / "loss_curve.png"
        if not curve.is_file() and (d / "metrics.jsonl").is_file():
            plot_training_curves(d)
        if curve.is_file():
            lines += [f"![training curves of {row['run']}]({_link(curve, out)})", ""]
        lines += _selection_lines(row)
        if row.get("label_free"):
            lines += ["Label-free (`data.dataset: photos`): no classes, so no Recall@K, MAP@R, NMI or retrieval grid; "
                      "scored by kNN agreement with the teacher on the held-out photos."]
            continue
        grid = write_retrieval_grid(d, device=device, root=root, progress=progress)
        lines += [
            f"Queries from the {row.get('split') or 'evaluation'} split (grey frame) and their {GRID_NEIGHBOURS} "
            "nearest neighbours: framed green when of the query's class, red when not.",
            "",
            f"![retrieval grid of {row['run']}]({_link(grid, out)})",
        ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


# --------------------------------------------------------------------------- command line


def _cmd_report(args: argparse.Namespace) -> int:
    report = write_report(args.runs, args.output, args.remeasure, args.device, args.root, not args.no_progress)
    print(report)
    print(report.with_suffix(".csv"))
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``embdistill report`` on the main parser's sub-commands."""
    p = sub.add_parser("report", help="table (markdown + CSV) and plots comparing trained runs")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (each with last.pt)")
    p.add_argument("-o", "--output", type=Path, help="where report.md/.csv go (default: the runs' common parent)")
    p.add_argument("--remeasure", action="store_true", help="time every run's CPU speed again now, so the speeds compare")
    p.add_argument("--root", help="dataset root, when the one recorded in the runs has moved")
    p.add_argument("--device", default="auto", help="for embedding the test set once per run (auto | cpu | cuda)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_report)
