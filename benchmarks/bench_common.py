"""What the benchmark scripts share: running a config unless it already finished, where it ran, repo-relative paths,
and a few images of each class for smoke runs."""
from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embdistill.config import ExperimentConfig
from embdistill.engine.persist.rundir import finished_with
from embdistill.engine.train import run

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """A benchmark table's row: a student and a method (the script's own ``Method``), its runs over seeds and their config."""
    student: str
    method: Any
    runs: list[dict] = field(default_factory=list)
    config: dict | None = None
    ran: dict | None = None  # the command, date and minutes that produced the row (where the table records them)


def run_cached(cfg: ExperimentConfig, after_run: Callable[[ExperimentConfig], None] | None = None) -> dict[str, Any]:
    """``cfg``'s ``summary.yaml``, running it first unless the same config already finished (an interrupted
    benchmark continues where it stopped); ``after_run`` follows a fresh run only (e.g. its report)."""
    if finished_with(cfg):
        print(f"[bench] reusing {cfg.run_dir}", flush=True)
    else:
        run(cfg, progress=False)
        if after_run is not None:
            after_run(cfg)
    return yaml.safe_load((cfg.run_dir / "summary.yaml").read_text())


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


def render_results(out: Path, markdown: Callable[[dict[str, Any]], str]) -> None:
    """``out``.md again from ``out``.json (a table's layout changed, not its figures)."""
    write_results(out, json.loads(Path(f"{out}.json").read_text()), markdown)
