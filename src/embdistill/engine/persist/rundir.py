"""A run directory on disk: starting one afresh, and the config and checkpoint a resumed run continues from.

``RUN_DIR`` holds ``config.yaml`` (what the run was started with), ``metrics.jsonl``,
``last.pt``, ``best.pt`` when the run chooses an epoch (``train.select: best``) and, for
distillation, ``teacher_cache.pt``. A fresh run clears what an
earlier run left; a resumed run must have the same config up to the keys whose field
declares ``may_change("resume")``, and a finished run a benchmark reuses up to those
declaring ``may_change("reuse")`` (config/resume.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from embdistill.checkpoints import BEST, CheckpointError, load_checkpoint, remove_partial_writes
from embdistill.config import ConfigError, ExperimentConfig, apply_overrides, from_dict, read_yaml, to_dict
from embdistill.config.resume import REUSE_MAY_CHANGE, RESUME_MAY_CHANGE, config_differences, may_change_for

TEACHER_CACHE = "teacher_cache.pt"


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config a run directory was started with (its config.yaml), with ``overrides`` on top."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it has no config.yaml, so it is not a run directory of `embdistill train`")
    values = apply_overrides(read_yaml(path), overrides or [])
    values.update(output_dir=str(run_dir.parent), name=run_dir.name)  # the directory, wherever it is now
    return from_dict(values)


def finished_with(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg.run_dir`` holds a finished run (``summary.yaml``) started with the same config.

    Same means equal up to ``REUSE_MAY_CHANGE``, with the saved ``config.yaml`` read through
    today's config classes: a key added to embdistill since then, at its default, or a changed
    log or warning setting does not make a finished run look different (benchmarks reuse
    finished runs; rerunning a teacher would rewrite its checkpoint and stale its bank).
    """
    saved = cfg.run_dir / "config.yaml"
    if not ((cfg.run_dir / "summary.yaml").is_file() and saved.is_file()):
        return False
    try:
        return not config_differences(to_dict(from_dict(read_yaml(saved))), to_dict(cfg), may_change_for(cfg, REUSE_MAY_CHANGE))
    except ConfigError:  # a key that no longer exists, or a value no longer valid: not the same run
        return False


def start_fresh(cfg: ExperimentConfig) -> None:
    """A new run: write config.yaml, and drop the log and teacher cache of any earlier run in the directory."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / TEACHER_CACHE).unlink(missing_ok=True)
    (run_dir / BEST).unlink(missing_ok=True)
    remove_partial_writes(run_dir)


def resume_checkpoint(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The checkpoint to continue from, checked against ``cfg``; None when the run has none yet."""
    path = cfg.run_dir / "last.pt"
    if cfg.run_dir.is_dir():
        remove_partial_writes(cfg.run_dir)
    if not path.is_file():
        print(f"[{cfg.name}] {cfg.run_dir} has no checkpoint yet: starting from the beginning")
        return None
    payload = load_checkpoint(path)
    if "resume" not in payload:
        raise CheckpointError(f"cannot resume from {path}: it holds no resume state (written by an older embdistill)")
    try:  # read through today's config classes, like finished_with: a key added since, at its default, is no change
        saved = to_dict(from_dict(payload["config"]))
    except ConfigError as err:
        raise ConfigError(f"cannot resume {cfg.run_dir}: its checkpoint's config is not valid today: {err}") from err
    differences = config_differences(saved, to_dict(cfg), may_change_for(cfg, RESUME_MAY_CHANGE))
    if differences:
        raise ConfigError(f"cannot resume {cfg.run_dir}: the config differs from its checkpoint's in " + "; ".join(differences))
    return payload
