"""What the benchmark scripts share: running a config unless it already finished, where it ran, and repo-relative paths."""
from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from embdistill.config import ExperimentConfig
from embdistill.engine.rundir import finished_with
from embdistill.engine.train import run

ROOT = Path(__file__).resolve().parents[1]


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
