"""What the benchmark scripts share, light enough for any process to import (the standard library only).

- the repository's paths (:data:`ROOT`, :data:`RESULTS`, :data:`SHARED`) and :func:`command`, how a result
  records the command that made it;
- :func:`machine`, :func:`repo_relative`, :func:`write_results` / :func:`render_results` (a table's JSON and the
  Markdown rendered from it);
- :func:`few_per_class`, :func:`cub_subset` (a smoke run's data), :func:`smoke_folder` (where a smoke writes) and the tables' cells (:data:`KEYS`, :func:`cell`, :func:`pooled_std`).

The heavier pieces are modules beside this one: ``runs`` (run a config unless it already finished),
``strong_table`` (the strong benchmark's tables), ``int8`` (export and quantize a checkpoint, embed with ONNX
Runtime), ``teacher_choice`` (score ImageNet backbones as teachers).
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository: every path of every benchmark starts here
RESULTS = ROOT / "benchmarks" / "results"  # the committed results
SHARED = ROOT.parent / "shared"  # the data sets and weights beside the repository (../shared/data, ../shared/weights)
KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")


def command(module: str, argv: list[str] | None = None) -> str:
    """How a result records the command that made it: ``python -m benchmarks.<name> ARGS`` (``argv``: the arguments,
    by default this process's)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(filter(None, [f"python -m {module}", *args]))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a benchmark's own subprocess (``python -m benchmarks.<name>`` from :data:`ROOT`): this
    checkout's ``src`` and the repository first on ``PYTHONPATH``, also where embdistill is not installed."""
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on, as its results record it."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


def few_per_class(data: Path, out: Path, per_class: int) -> Path:
    """The first ``per_class`` images (sorted by name) of every class folder of ``data`` (one folder per class,
    as the cars196 and folder readers read it), linked, not copied, under ``out``: a smoke run's data."""
    root = out / f"data_{per_class}_per_class"
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(p for p in folder.iterdir() if p.is_file())[:per_class]:
            link = root / folder.name / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    return root


def cub_subset(data: Path, out: Path, per_split: int, per_class: int | None = None) -> Path:
    """The first ``per_split`` train and test species of a CUB root, each with its first ``per_class`` images (all by
    default), its image folders linked, not copied: a smoke run's data (``few_per_class`` is the same for one folder
    per class)."""
    root = out / (f"subset_{per_split}" + (f"x{per_class}" if per_class else ""))
    lines = (data / "classes.txt").read_text().splitlines()
    train = [line for line in lines if int(line.split()[0]) <= 100]  # CUB's rule: class ids <= 100 train
    chosen = train[:per_split] + [line for line in lines if line not in train][:per_split]
    keep = {line.split()[0] for line in chosen}
    labels, count = [], dict.fromkeys(keep, 0)
    for line in (data / "image_class_labels.txt").read_text().splitlines():
        label = line.split()[1]
        if label in keep and (per_class is None or count[label] < per_class):
            labels.append(line)
            count[label] += 1
    ids = {line.split()[0] for line in labels}
    images = [line for line in (data / "images.txt").read_text().splitlines() if line.split()[0] in ids]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for line in chosen:
        link = root / "images" / line.split(maxsplit=1)[1]
        if not link.exists():
            link.symlink_to(data / "images" / link.name)
    for name, rows in (("classes.txt", chosen), ("image_class_labels.txt", labels), ("images.txt", images)):
        (root / name).write_text("\n".join(rows) + "\n")
    return root


def smoke_folder(name: str) -> Path:
    """Where a ``--smoke`` run writes when no ``--out`` names a place: a new temporary folder, kept so that its results
    can be read (the script prints where), never ``benchmarks/results`` or ``runs/``. The links of the smoke's few
    images go beside its results (in this folder, or in ``--out``'s); its runs, where it trains, in a folder removed
    at the end."""
    return Path(tempfile.mkdtemp(prefix=f"{name}_smoke_"))


def repo_relative(value: Any) -> Any:
    """``value`` with every absolute path rewritten relative to the repository (run_dir, data.root,
    distill.teacher, output_dir), so the committed results name no directory of the machine they ran on."""
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return Path(os.path.relpath(value, ROOT)).as_posix()
    return value


def write_results(out: Path, result: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    """``out``.json (paths made repository-relative, the machine added) and ``out``.md rendered from it."""
    result = repo_relative({**result, "machine": result.get("machine") or machine()})
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{out}.md").write_text(markdown(result))
    print(f"-> {out}.md", flush=True)


def merged(out: Path, result: dict[str, Any], field: str, key: str, order: list[str] | None = None) -> dict[str, Any]:
    """``result`` with the entries of ``out``.json's ``field`` that it did not run again (a table built a few rows or
    trials at a time; an entry run again replaces its old one). Each kept entry keeps the command and date that made
    it (the old result's, unless it records its own); entries sort by ``order`` of their ``key``, else by ``key``."""
    path = Path(f"{out}.json")
    if not path.is_file():
        return result
    previous = json.loads(path.read_text())
    new = {entry[key] for entry in result[field]}
    kept = [{"command": previous["command"], "date": previous["date"], **entry}
            for entry in previous[field] if entry[key] not in new]
    rank = (lambda e: order.index(e[key])) if order else (lambda e: e[key])
    return {**result, field: sorted(kept + result[field], key=rank)}


def ran_by(result: dict[str, Any], field: str, key: str) -> list[str]:
    """One Markdown line per command that ran some of ``result[field]``, with its date and those entries' ``key``."""
    ran: dict[tuple[str, str], list[str]] = {}
    for entry in result[field]:
        ran.setdefault((entry.get("command", result["command"]), entry.get("date", result["date"])), []).append(entry[key])
    return [f"- `{command}` ({date}): {', '.join(names)}" for (command, date), names in sorted(ran.items(), key=lambda x: x[0][1])]


def render_results(out: Path, markdown: Callable[[dict[str, Any]], str]) -> None:
    """``out``.md again from ``out``.json (a table's layout changed, not its figures)."""
    write_results(out, json.loads(Path(f"{out}.json").read_text()), markdown)


def render_markdown(out: Path, markdown: Callable[[dict[str, Any]], str]) -> None:
    """``out``.md again from ``out``.json, the JSON left as it is (a script whose JSON is not ``write_results``')."""
    Path(f"{out}.md").write_text(markdown(json.loads(Path(f"{out}.json").read_text())))
    print(f"-> {out}.md", flush=True)


def cell(values: list[float]) -> str:
    """One value, or the mean ± std of several (a row over seeds)."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def pooled_std(a: list[float], b: list[float]) -> float | None:
    """sqrt of the mean of the two sample variances (equal seed counts); None with fewer than 2 seeds each."""
    if len(a) < 2 or len(b) < 2:
        return None
    return math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties take their average rank)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
