"""Collapse detection: the batch spread against hand-computed values, and the warning in log, summary and report."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from conftest import REPO, tiny_overrides
from embdistill.config import load_config
from embdistill.engine.persist.runlog import read_log
from embdistill.engine.train import run
from embdistill.evaluation.collapse import collapse_warning, embedding_spread

STUDENT = REPO / "configs" / "cub100" / "mobilenet025.yaml"


def test_spread_by_hand():
    assert embedding_spread(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)  # mean 0: distance 1 each
    assert embedding_spread(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(math.sqrt(0.5))  # |x - (.5, .5)|² = .5
    assert embedding_spread(torch.tensor([[0.6, 0.8]] * 5)) == pytest.approx(0.0, abs=1e-7)  # collapsed
    assert math.isnan(embedding_spread(torch.tensor([[1.0, 0.0]])))
    # Unit vectors: spread² = 1 - |mean|².
    x = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    assert embedding_spread(x) == pytest.approx(math.sqrt(1 - x.mean(0).pow(2).sum().item()), rel=1e-5)


def test_warning_only_below_the_threshold():
    assert collapse_warning([0.8, 0.7]) is None
    assert collapse_warning([float("nan")]) is None
    message = collapse_warning([0.01, 0.03], threshold=0.05)
    assert message is not None and "0.0200" in message and "collapsing" in message


@pytest.mark.slow
def test_every_step_logs_the_spread_and_a_collapse_is_reported(tmp_path, cub100):
    from embdistill.report import write_report

    healthy = run(load_config(STUDENT, tiny_overrides(tmp_path, cub100, "healthy")), progress=False)
    steps = [r for r in read_log(healthy.run_dir) if r["kind"] == "step"]
    assert steps and all(0.0 < r["spread"] <= 1.0 + 1e-6 for r in steps)
    summary = yaml.safe_load((healthy.run_dir / "summary.yaml").read_text())
    assert 0.0 < summary["embedding_spread"] <= 1.0 + 1e-6 and "collapse_warning" not in summary
    # Unit vectors never spread more than 1, so a threshold of 2 must flag the run.
    flagged = run(load_config(STUDENT, tiny_overrides(tmp_path, cub100, "flagged", **{"train.collapse_spread": 2.0})),
                  progress=False)
    summary = yaml.safe_load((flagged.run_dir / "summary.yaml").read_text())
    assert "collapsing" in summary["collapse_warning"]
    assert [r for r in read_log(flagged.run_dir) if r["kind"] == "warning"]
    report = write_report([healthy.run_dir, flagged.run_dir], tmp_path / "report").read_text()
    assert "**Warning:** flagged" in report and "**Warning:** healthy" not in report
