"""Running a benchmark's configs: a table's row, and a config run unless it already finished."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from embdistill.config import ExperimentConfig
from embdistill.engine.persist.rundir import finished_with
from embdistill.engine.train import run


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
