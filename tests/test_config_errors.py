"""A bad config ends the CLI before any work: exit code 2, one line naming the key, no traceback, no run directory.

Every key with a fixed set of choices (a ``Literal`` in the config dataclasses, found
by walking them, so a new one is covered without editing this file) gets a wrong
value; so does every numeric key, below and above the range declared beside its
field (walked the same way: a new number without a range fails here), while the
ends of each range stay accepted; so do the keys checked against a registry, a loss
argument, an unknown key and a wrong type.
"""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest
import yaml

from conftest import REPO, TIMEOUT_SCALE
from embdistill.cli import main
from embdistill.config import ConfigError, ExperimentConfig, load_config, to_dict
from embdistill.config.fields import RANGE, CountOrFraction, Range

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
        "train.select", "train.select_metric", "eval.split", "distill.teacher_precision", "data.resize",
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
    ("distill.terms=[{name: relaxed_contrastive, args: {sigma: 0}}]", "distill.terms[0].args", ("sigma", "> 0", "got 0")),
    ("distill.terms=[{name: relaxed_contrastive, args: {delta: wide}}]", "distill.terms[0].args.delta", ("float", "'wide'")),
    ("distill.terms=[{name: pkt, args: {eps: 0.1}}]", "distill.terms[0].args.eps", ("pkt", "(none)")),
    ("distill.terms=[{name: relative, until_epoch: 0}]", "distill.terms[0].until_epoch", (">= 1", "got 0")),
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


@pytest.mark.parametrize("override, message", [
    ("train.nan_policy=stpo", "train.nan_policy: expected one of 'stop', 'skip', got 'stpo'"),  # a choice
    ("train.epochs=-1", "train.epochs: expected a value >= 0, got -1"),  # a range
])
def test_a_bad_value_ends_the_real_command_the_same_way(tmp_path, override, message) -> None:
    out = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "embdistill", "train", "-c", str(CONFIG), f"output_dir={out}", override],
        cwd=REPO, capture_output=True, text=True, timeout=300 * TIMEOUT_SCALE,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"embdistill train: error: {message}"
    assert not out.exists()


# --------------------------------------------------------------------------- numeric ranges

# An override writing one item of a list of sections must give that section's required fields too.
SECTION_ITEM = {"distill.terms": "name: relative"}
# A value at one end of its range that is valid only together with another key's value.
COMPANIONS = {"distill.teacher_image_size": ["data.image_size=1"]}


@dataclasses.dataclass(frozen=True)
class Numeric:
    """A number-valued config key: its dataclass field, int or float, and whether the field is a list of them."""

    key: str  # dotted; inside a list of sections: "distill.terms[0].weight"
    field: dataclasses.Field
    kind: type
    listed: bool

    @property
    def declared(self) -> Range | CountOrFraction | None:
        """The field's whole rule, as its error message states it."""
        return self.field.metadata.get(RANGE)

    @property
    def bounds(self) -> Range | None:
        """The range for values of this kind (a count-or-fraction field: the count's for int, the fraction's for float)."""
        declared = self.declared
        return declared.of(self.kind) if isinstance(declared, CountOrFraction) else declared

    def override(self, value: float) -> tuple[str, str]:
        """The ``key=value`` override setting this key to ``value``, and the key its error must name."""
        text = ".nan" if math.isnan(value) else (".inf" if value == math.inf else repr(value))
        section, item, leaf = self.key.partition("[0].")
        if item:
            assert section in SECTION_ITEM, f"add the required fields of a {section} item to SECTION_ITEM"
            return f"{section}=[{{{SECTION_ITEM[section]}, {leaf}: {text}}}]", self.key
        if self.listed:
            return f"{self.key}=[{text}]", f"{self.key}[0]"
        return f"{self.key}={text}", self.key


def numeric_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[Numeric]:
    """Every int or float field (plain, optional or a list of them), in nested sections and lists of sections too."""
    found: list[Numeric] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        for option in typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,):
            listed = typing.get_origin(option) is list
            inner = typing.get_args(option)[0] if listed else option
            if inner in (int, float):  # bool is neither
                found.append(Numeric(key, f, inner, listed))
            elif dataclasses.is_dataclass(inner):
                found.extend(numeric_keys(inner, f"{key}[0]." if listed else f"{key}."))
    return found


def outside(n: Numeric) -> list[float]:
    """Values just past each end of the key's range; for floats also NaN and infinity."""
    r, step = n.bounds, 1 if n.kind is int else 0.5
    values = [] if r.low is None else [n.kind(r.low if r.low_open else r.low - step)]
    values += [] if r.high is None else [n.kind(r.high if r.high_open else r.high + step)]
    return values + ([math.nan, math.inf] if n.kind is float else [])


def ends(n: Numeric) -> list[float]:
    """The ends of the key's range, or just inside an open end."""
    r, nudge = n.bounds, 1 if n.kind is int else 1e-6
    values = [] if r.low is None else [n.kind(r.low + nudge if r.low_open else r.low)]
    return values + ([] if r.high is None else [n.kind(r.high - nudge if r.high_open else r.high)])


def read_back(values: Any, key: str) -> Any:
    for part in key.replace("[0]", ".0").split("."):
        values = values[int(part)] if isinstance(values, list) else values[part]
    return values


NUMERIC = numeric_keys()
RANGED = [n for n in NUMERIC if n.bounds is not None]


def test_every_numeric_key_declares_a_range() -> None:
    missing = [n.key for n in NUMERIC if n.bounds is None]
    assert not missing, f"declare a range beside these fields (metadata=at_least(...), see config/fields.py): {missing}"
    # The walk reaches optional sections, lists of numbers and lists of sections.
    assert {"train.epochs", "model.dim", "eval.ks", "distill.terms[0].weight",
            "distill.semi_supervised.hide_label_fraction", "distill.cross_quality.jpeg_quality"} <= {n.key for n in NUMERIC}


@pytest.mark.parametrize("n", RANGED, ids=lambda n: n.key)
def test_every_default_is_in_its_range(n: Numeric) -> None:
    f = n.field
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    for value in default if n.listed else [default]:
        assert value is None or value in n.declared, f"{n.key}: default {value!r} is not {n.declared}"


@pytest.mark.parametrize("n, value", [(n, v) for n in RANGED for v in outside(n)],
                         ids=lambda x: x.key if isinstance(x, Numeric) else repr(x))
def test_every_numeric_key_refuses_a_value_outside_its_range(tmp_path, capsys, n: Numeric, value: float) -> None:
    override, key = n.override(value)
    code, err = run_cli(tmp_path, capsys, override)
    assert_one_line_error(code, err, f"{key}: expected a value {n.declared}, got {value!r}")


@pytest.mark.parametrize("n, value", [(n, v) for n in RANGED for v in ends(n)],
                         ids=lambda x: x.key if isinstance(x, Numeric) else repr(x))
def test_the_ends_of_every_range_are_accepted(n: Numeric, value: float) -> None:
    override, key = n.override(value)
    cfg = load_config(CONFIG, [*DISTILL, *COMPANIONS.get(n.key, []), override])  # with distill terms, metric_weight=0 is valid
    assert read_back(to_dict(cfg), key) == value


def test_the_range_check_names_the_key_in_lists() -> None:
    with pytest.raises(ConfigError, match=r"^eval\.ks\[2\]: expected a value >= 1, got 0$"):
        load_config(None, ["eval.ks=[1, 4, 0]"])
    with pytest.raises(ConfigError, match=r"^distill\.terms\[1\]\.weight: expected a value >= 0, got -2\.0$"):
        load_config(None, [*DISTILL, "distill.terms=[{name: relative}, {name: absolute, weight: -2}]"])




def test_an_old_run_holding_a_value_now_out_of_range(tmp_path, capsys) -> None:
    # Saved configs are read through the same checks: resuming stops with the key named, and a
    # benchmark does not take the old run for a finished run of a valid config.
    from embdistill.engine.persist.rundir import finished_with

    cfg = load_config(CONFIG, [f"output_dir={tmp_path}", "name=old"])
    saved = to_dict(cfg)
    saved["train"]["log_every"] = 0  # a key a finished run may differ in, but not with a value no run can have
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    (cfg.run_dir / "summary.yaml").write_text("recall@1: 0.5\n")
    code = main(["train", "--resume", str(cfg.run_dir), "--no-progress"])
    assert_one_line_error(code, capsys.readouterr().err, "train.log_every: expected a value >= 1, got 0")
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["config.yaml", "summary.yaml"]
    assert not finished_with(cfg)
    saved["train"]["log_every"] = 1  # the end of the range: the same run
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert finished_with(cfg)
