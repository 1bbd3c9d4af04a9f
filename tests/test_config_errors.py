"""A bad config ends the CLI before any work: exit code 2, one line naming the key, no traceback, no run directory.

Every key with a fixed set of choices (a ``Literal`` in the config dataclasses, found
by walking them, so a new one is covered without editing this file) gets a wrong
value; so do the keys checked against a registry, a loss argument, an unknown key
and a wrong type.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest

from conftest import REPO
from embdistill.cli import main
from embdistill.config import ExperimentConfig

CONFIG = REPO / "configs" / "cub100" / "student.yaml"
DISTILL = ["distill.teacher=runs/nowhere/last.pt", "distill.terms=[{name: relative}]"]


def literal_keys(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, tuple[Any, ...]]:
    """Dotted key -> its choices, for every field whose annotation holds a Literal (nested sections included)."""
    found: dict[str, tuple[Any, ...]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        options = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        for option in options:
            if typing.get_origin(option) is Literal:
                found[key] = found.get(key, ()) + typing.get_args(option)
            elif dataclasses.is_dataclass(option):
                found.update(literal_keys(option, f"{key}."))
    return found


def run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, str]:
    out = tmp_path / "runs"
    command = "distill" if any(o.startswith("distill.") for o in overrides) else "train"
    extra = DISTILL if command == "distill" else []
    code = main([command, "-c", str(CONFIG), "--no-progress", f"output_dir={out}", "device=cpu", *extra, *overrides])
    err = capsys.readouterr().err
    assert not out.exists(), f"a run directory was created: {list(out.rglob('*'))}"
    return code, err


def assert_one_line_error(code: int, err: str, key: str, *named: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("embdistill ") and ": error: " in lines[0], err
    assert key in lines[0], err
    for text in named:
        assert text in lines[0], err


def test_the_walk_finds_every_fixed_choice_key() -> None:
    assert set(literal_keys()) == {
        "model.pooling", "train.schedule", "train.nan_policy", "train.precision", "train.channels_last",
        "distill.teacher_precision",
    }


@pytest.mark.parametrize("key, choices", sorted(literal_keys().items()))
def test_every_fixed_choice_key_refuses_a_wrong_value(tmp_path, capsys, key, choices) -> None:
    code, err = run_cli(tmp_path, capsys, f"{key}=not_a_choice")
    assert_one_line_error(code, err, key, "'not_a_choice'", *(repr(c) for c in choices if isinstance(c, str)))


@pytest.mark.parametrize("override, key, named", [
    ("data.dataset=cub2011", "data.dataset", ("'cub2011'", "cub200", "cars196", "sop", "folder")),
    ("model.backbone=resnet19", "model.backbone", ("'resnet19'", "resnet18", "mobilenet_v2", "timm/")),
    ("model.backbone=timm/no_such_net", "model.backbone", ("'no_such_net'",)),
    ("model.backbone_args={depth: 3}", "model.backbone_args.depth", ("width",)),
    ("train.metric_loss=triplet", "train.metric_loss", ("'triplet'", "batch_hard_triplet", "contrastive")),
    ("train.metric_loss_args={margn: 0.1}", "train.metric_loss_args.margn", ("margin", "soft")),
    ("train.metric_loss_args={margin: wide}", "train.metric_loss_args.margin", ("float", "'wide'")),
    ("device=gpu", "device", ("'gpu'", "cpu", "cuda")),
    ("device=cuda:x", "device", ("'cuda:x'",)),
    ("distill.terms=[{name: relatve}]", "distill.terms[0].name", ("'relatve'", "relative", "absolute", "rkd_angle")),
    ("distill.terms=[{name: relative, args: {reduction: sum}}]", "distill.terms[0].args.reduction",
     ("'sum'", "'mean'", "'frobenius'")),
    ("distill.terms=[{name: darkrank, args: {method: listwise}}]", "distill.terms[0].args.method", ("'listmle'", "'listnet'")),
    ("distill.terms=[{name: relative, args: {reducton: mean}}]", "distill.terms[0].args.reducton", ("reduction",)),
    ("distill.terms=[{name: hint}]", "distill.terms[0].args", ("student_layer", "teacher_layer")),
    ("distill.teacher_backbone=resnet19", "distill.teacher_backbone", ("'resnet19'",)),
    ("distill.teacher_image_size=32", "distill.teacher_image_size", ("32",)),
    ("distill.semi_supervised.hide_label_fraction=1.5", "distill.semi_supervised.hide_label_fraction", ("1.5",)),
    ("train.metric_weight=-1", "train.metric_weight", (">= 0", "-1")),
    ("train.metric_weight=0", "train.metric_weight", ("nothing to train", "distill.terms")),
])
def test_registry_names_and_checked_values(tmp_path, capsys, override, key, named) -> None:
    code, err = run_cli(tmp_path, capsys, override)
    assert_one_line_error(code, err, key, *named)


@pytest.mark.parametrize("override, key, named", [
    ("train.epoch=3", "train.epoch", ("epochs",)),  # unknown key
    ("train.epochs=ten", "train.epochs", ("int", "'ten'")),  # wrong type
    ("distill.terms=[{name: relative, weight: heavy}]", "distill.terms[0].weight", ("float",)),
])
def test_unknown_key_and_wrong_type(tmp_path, capsys, override, key, named) -> None:
    code, err = run_cli(tmp_path, capsys, override)
    assert_one_line_error(code, err, key, *named)


def test_a_bad_value_ends_the_real_command_the_same_way(tmp_path) -> None:
    out = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "embdistill", "train", "-c", str(CONFIG), f"output_dir={out}", "train.nan_policy=stpo"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "embdistill train: error: train.nan_policy: expected one of 'stop', 'skip', got 'stpo'"
    assert not out.exists()
