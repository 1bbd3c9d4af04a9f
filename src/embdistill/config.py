"""Experiment configuration: typed dataclasses, read from YAML, overridden from the command line.

Every run is described by one ``ExperimentConfig``. YAML files may name a ``_base_``
file (relative to themselves) whose values they override; ``key.sub=value``
arguments override both.

Everything is checked here, when the config is read, before any work starts:
unknown keys, values of the wrong type, values outside a fixed set of choices
(the ``Literal`` fields), numbers outside the range declared beside their field
(``metadata=at_least(0)``, see ranges.py), names looked up in a registry (dataset,
backbone, metric and distillation losses, and those losses' arguments), and the device string. Each
failure is one :class:`ConfigError` naming the key, the value and what is valid,
so a typo never silently falls back to a default or surfaces as a traceback later.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from embdistill.data.transforms import ResizeMode  # one list of modes for the config and the transforms
from embdistill.evaluation.collapse import COLLAPSE_SPREAD
from embdistill.models.embedder import ModelConfig
from embdistill.ranges import RANGE, SEED_MAX, above, at_least, between, count_or_fraction


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


Schedule = Literal["cosine", "step", "constant"]
NanPolicy = Literal["stop", "skip"]
Precision = Literal["auto", "fp32", "bf16"]
TeacherPrecision = Literal["fp32", "bf16"]
Select = Literal["last", "best"]
SelectMetric = Literal["recall@1", "map@r", "knn_agreement@10"]  # knn_agreement: with the teacher, no labels needed
EvalSplit = Literal["auto", "test", "validation"]
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass
class DataConfig:
    dataset: str = "cub200"  # a reader of data/datasets.py DATASETS: cub200 | cars196 | sop | folder
    root: str = "../shared/data/cub100"
    image_size: int = field(default=224, metadata=at_least(1))
    num_workers: int = field(default=2, metadata=at_least(0))
    cache_images: bool = False  # keep decoded images in memory (2-core machines are decode-bound)
    skip_bad_images: bool = False  # skip (and list) corrupt files instead of stopping
    # Hold out the last N train classes to choose lambda/epochs; a float in (0, 1) holds out that fraction of them
    # (rounded, at least 2, leaving at least 2 to train on): held_out_count, for datasets of any size.
    validation_classes: int | float = field(default=0, metadata=count_or_fraction())
    # How a non-square image becomes the square input, for eval and training crops alike:
    # crop (centre square; cuts the ends off wide Cars-196 crops) | squash (stretch) | pad (whole, zero border)
    resize: ResizeMode = "crop"


@dataclass
class TrainConfig:
    """How the student (or teacher) is trained.

    Under ``torchrun`` every process draws its own P×K batch (no class is shared
    between processes in a step), so the global batch is ``processes × P × K``.
    ``gather_global_batch`` (default true) makes the metric loss and the
    batch-level distillation terms (relative, RKD, DarkRank) see the global batch,
    so N processes give the loss and gradients of one process with N times the
    batch; false keeps each process's loss to its own batch (no gathering, but a
    different objective). Per-image terms (absolute, hint, attention) are local
    either way.

    ``precision``: ``bf16`` runs the student's forward pass under bf16 autocast (the
    losses stay fp32); ``auto`` means bf16 on CUDA and fp32 on the CPU.
    ``channels_last``: NHWC memory layout for the networks and their inputs, faster
    convolutions on GPUs; ``auto`` means on for CUDA, off on the CPU.
    """

    epochs: int = field(default=30, metadata=at_least(0))  # 0: only evaluate the starting network
    classes_per_batch: int = field(default=4, metadata=at_least(2))  # P, paper: 4 (a triplet needs a negative class)
    images_per_class: int = field(default=8, metadata=at_least(2))  # K, paper: 8 (and a positive)
    batches_per_epoch: int | None = field(default=None, metadata=at_least(1))  # default: one pass over the train images
    # A label-free dataset (data.dataset: photos) has no classes for P×K batches: it trains on random batches of this
    # many images (None: classes_per_batch x images_per_class). Labelled datasets keep P×K and ignore it.
    batch_size: int | None = field(default=None, metadata=at_least(2))
    lr: float = field(default=1e-4, metadata=above(0))  # head learning rate (Adam)
    backbone_lr_mult: float = field(default=0.1, metadata=at_least(0))  # backbone lr = lr * this (0: its weights stay as they are)
    # The objective's own parameters (the absolute term's projection, hint regressors, proxies) start from random
    # and have no ImageNet start to keep: their lr = lr * this.
    objective_lr_mult: float = field(default=1.0, metadata=above(0))
    weight_decay: float = field(default=5e-4, metadata=at_least(0))
    schedule: Schedule = "cosine"
    step_epochs: list[int] = field(default_factory=list, metadata=at_least(1))  # for schedule=step: decay x0.1 at these
    warmup_epochs: float = field(default=0.0, metadata=at_least(0))
    metric_loss: str = "batch_hard_triplet"  # a name in losses/metric.py METRIC_LOSSES
    metric_loss_args: dict[str, Any] = field(default_factory=dict)
    metric_weight: float = field(default=1.0, metadata=at_least(0))  # 0: the teacher alone trains the student (the metric loss is still logged)
    log_every: int = field(default=10, metadata=at_least(1))  # steps
    collapse_spread: float = field(default=COLLAPSE_SPREAD, metadata=at_least(0))  # warn when an epoch's mean batch embedding spread falls below this
    nan_policy: NanPolicy = "stop"  # skip: skipped batches are counted in summary.yaml
    checkpoint_every: int = field(default=0, metadata=at_least(0))  # also checkpoint every N steps mid-epoch (0: only at epoch ends)
    gather_global_batch: bool = True  # multi-process: batch-level losses see every process's images (exact)
    precision: Precision = "auto"  # student forward under autocast; auto: bf16 on CUDA
    channels_last: bool | Literal["auto"] = "auto"  # auto: on for CUDA
    # Which weights are scored: the last epoch's, or the best on the held-out train classes (best.pt,
    # engine/select.py) by select_metric, evaluated every eval.every_epochs and after the last epoch.
    # knn_agreement@10 (evaluation/agreement.py) needs no labels: the share of each held-out image's 10 nearest
    # neighbours under the teacher that the student also ranks in its 10 nearest.
    select: Select = "last"
    select_metric: SelectMetric = "recall@1"
    patience: int = field(default=0, metadata=at_least(0))  # select=best: stop after N evaluations without a better one (0: never)


@dataclass
class DistillTermConfig:
    name: str  # a name in losses/distill.py DISTILL_LOSSES: absolute | relative | rkd_distance | rkd_angle | darkrank | relaxed_contrastive | pkt | hint | attention
    weight: float = field(default=1.0, metadata=at_least(0))  # lambda
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SemiSupervisedConfig:
    folder: str | None = None  # extra unlabelled images (any layout, searched recursively)
    hide_label_fraction: float = field(default=0.0, metadata=between(0, 1, high_open=True))  # or: this fraction of train classes becomes unlabelled
    unlabelled_per_batch: int = field(default=16, metadata=at_least(1))


@dataclass
class CrossQualityConfig:
    resolution: int | None = field(default=None, metadata=at_least(1))  # student sees images down-scaled to this and back
    jpeg_quality: int | None = field(default=None, metadata=between(1, 100))  # and/or re-encoded at this JPEG quality
    degrade_test: bool = True  # evaluate on test images degraded the same way


@dataclass
class DistillConfig:
    teacher: str = ""  # checkpoint written by `embdistill train`
    teacher_backbone: str | None = None  # expected teacher architecture (None: accept the checkpoint's)
    teacher_dim: int | None = field(default=None, metadata=at_least(1))  # expected teacher embedding size (None: accept the checkpoint's)
    strict_teacher: bool = False  # a teacher trained at another image size is an error, not a note
    terms: list[DistillTermConfig] = field(default_factory=list)
    cache_teacher: bool = True  # compute teacher outputs once per fixed augmented view
    cache_views: int = field(default=4, metadata=at_least(1))  # number of fixed views per image when caching (and in the bank)
    # The fixed views are seeded by this, not by the run's seed: every seed of a row sees the same
    # views, so they can share one teacher bank.
    view_seed: int = field(default=0, metadata=between(0, SEED_MAX))
    # A file of the teacher's embeddings of every (image, view), filled once (`embdistill bank`, or the
    # first run that names it) and read by every later run; refused if made for other inputs.
    bank: str | None = None
    # The teacher sees each augmented crop at this size, the student the same crop resized to
    # data.image_size: a big teacher keeps its resolution while a phone student runs small.
    teacher_image_size: int | None = field(default=None, metadata=at_least(1))  # None: data.image_size
    teacher_precision: TeacherPrecision = "fp32"
    semi_supervised: SemiSupervisedConfig | None = None
    cross_quality: CrossQualityConfig | None = None


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata=at_least(1))
    every_epochs: int = field(default=0, metadata=at_least(0))  # 0: only at the end
    batch_size: int = field(default=64, metadata=at_least(1))
    initial: bool = False  # also evaluate before training (e.g. a pretrained starting point)
    # What summary.yaml and the report score. auto: the held-out train classes when data.validation_classes > 0
    # (what that key alone always meant), else the test classes. test with validation classes: those are scored
    # every every_epochs (train.select chooses on them), the test classes once, at the end.
    split: EvalSplit = "auto"


@dataclass
class ExperimentConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = field(default=0, metadata=between(0, SEED_MAX))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = field(default=None, metadata=at_least(1))  # torch CPU threads; None: torch's default
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return ", ".join(repr(c) for c in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):  # True is not 1
            return value
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors: dict[Any, ConfigError] = {}
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors[option] = err
        # A mapping for an optional section: the section's own error names the bad nested key.
        sections = [o for o in errors if dataclasses.is_dataclass(o)]
        if isinstance(value, dict) and len(sections) == 1:
            raise errors[sections[0]]
        names = " or ".join("None" if o is type(None) else _type_name(o) for o in options)
        raise ConfigError(f"{key}: expected {names}, got {value!r} ({type(value).__name__})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key '{where}{unknown[0]}'; valid keys here: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, dicts merged key by key, except that a file choosing another loss or
    backbone (``metric_loss``, ``backbone``...) does not inherit its ``*_args``: they belong to the old choice."""
    merged = dict(base)
    for key, value in update.items():
        if key in base and f"{key}_args" in base and value != base[key]:
            merged[f"{key}_args"] = {}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict, with its ``_base_`` chain merged in."""
    path = Path(path)
    if path.resolve() in _chain:
        raise ConfigError(f"_base_ chain loops: {' -> '.join(map(str, _chain))} -> {path.resolve()}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    base = values.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: _base_ must be a file name, got {base!r}")
        values = _merge(read_yaml(path.parent / base, (*_chain, path.resolve())), values)
    return values


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings; each value is parsed as YAML (``1e-3``, ``true``, ``[1, 2]``)."""
    values = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[leaf] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    values = read_yaml(path) if path else {}
    return from_dict(apply_overrides(values, overrides or []))


def from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build and check a config (types, choices, registry names); raises ConfigError naming the key."""
    cfg = _build(ExperimentConfig, values)
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- checks beyond types


def validate(cfg: ExperimentConfig) -> None:
    """Check what types alone cannot: registry names, call arguments, the device, value ranges.

    The registries are imported here, not at module level: losses/objective.py imports
    this module, so a module-level import of the losses would be an import circle.
    """
    from embdistill.data.datasets import DATASETS
    from embdistill.losses.distill import DISTILL_LOSSES
    from embdistill.losses.metric import METRIC_LOSSES

    _check_ranges(cfg)
    if not DEVICE_PATTERN.fullmatch(cfg.device):
        raise ConfigError(f"device: expected auto, cpu, cuda, cuda:N or mps, got {cfg.device!r}")
    _check_label_free(cfg)  # before the selection's checks: the reason is the missing labels
    _check_selection(cfg)
    _check_name("data.dataset", "dataset", cfg.data.dataset, DATASETS)
    _check_backbone("model.backbone", cfg.model.backbone, "model.backbone_args", cfg.model.backbone_args)
    _check_name("train.metric_loss", "metric loss", cfg.train.metric_loss, METRIC_LOSSES)
    _check_call("train.metric_loss_args", f"metric loss {cfg.train.metric_loss!r}",
                METRIC_LOSSES[cfg.train.metric_loss], cfg.train.metric_loss_args)
    d = cfg.distill
    if cfg.train.metric_weight == 0 and cfg.train.epochs > 0 and (d is None or not d.terms):
        raise ConfigError("train.metric_weight: 0 leaves nothing to train without distill.terms; "
                          "give distillation terms or a weight > 0")
    if d is None:
        return
    if d.teacher_backbone is not None:
        _check_backbone("distill.teacher_backbone", d.teacher_backbone)
    for i, term in enumerate(d.terms):
        key = f"distill.terms[{i}]"
        _check_name(f"{key}.name", "distillation loss", term.name, DISTILL_LOSSES)
        loss = DISTILL_LOSSES[term.name]
        _check_call(f"{key}.args", f"distillation loss {term.name!r}", loss, term.args, provided=loss.NETWORK_ARGS)
        if not loss.NETWORK_ARGS:  # nothing to read off the networks: values the loss refuses (sigma <= 0) end here
            try:
                loss(**term.args)
            except ValueError as err:
                raise ConfigError(f"{key}.args: {err}") from err
    if d.teacher_image_size is not None and d.teacher_image_size < cfg.data.image_size:
        raise ConfigError(f"distill.teacher_image_size: expected an int >= data.image_size ({cfg.data.image_size}), "
                          f"got {d.teacher_image_size}")


def held_out_count(validation_classes: int | float, train_classes: int) -> int:
    """How many of ``train_classes`` classes ``data.validation_classes`` holds out.

    A count is taken as it is (loading the splits refuses one that leaves fewer than 2 to
    train on). A fraction is of the train classes, rounded, at least 2 and leaving at
    least 2 to train on, so a recipe holds out a quarter of whatever folder it is given.
    At least 2, not 1: among the images of a single class every neighbour is of the same
    class, R@1 is 1 after every epoch, and the selection would always keep the first.
    """
    if isinstance(validation_classes, int):
        return validation_classes
    from embdistill.data.datasets import DatasetError

    if train_classes < 4:
        raise DatasetError(f"data.validation_classes={validation_classes} holds out a fraction of the train classes, "
                           f"which needs at least 4 (2 held out, 2 to train on); there are {train_classes}")
    return min(max(2, round(validation_classes * train_classes)), train_classes - 2)


def with_held_out_count(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with a fractional ``data.validation_classes`` turned into the count it means for its dataset.

    Reads the dataset's train split (only its file list) to count the classes. The
    commands that train or fill a bank call this before the run, so the run directory's
    config.yaml records the count: a resumed run, ``evaluate`` and the report hold out
    the same classes without counting again. A count comes back unchanged.
    """
    value = cfg.data.validation_classes
    if isinstance(value, int):
        return cfg
    from embdistill.data.datasets import load_dataset

    train_classes = load_dataset(cfg.data.dataset, cfg.data.root, "train").num_classes
    count = held_out_count(value, train_classes)
    from embdistill.data.datasets import is_label_free

    what = "photos (each its own class, chosen by a hash of its path)" if is_label_free(cfg.data.dataset) else "train classes"
    print(f"[{cfg.name}] data.validation_classes={value}: holding out the last {count} of {train_classes} {what}",
          flush=True)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, validation_classes=count))


def _check_ranges(section: Any, prefix: str = "") -> None:
    """Every field declaring a range (``metadata=at_least(0)`` and the like, see ranges.py) holds a value in it.

    Walks the built config, nested sections and lists of them included, so a field
    gets checked by declaring its range, wherever it sits.
    """
    for f in dataclasses.fields(section):
        key, value = f"{prefix}{f.name}", getattr(section, f.name)
        bounds = f.metadata.get(RANGE)
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]
        for where, item in items:
            if dataclasses.is_dataclass(item):
                _check_ranges(item, f"{where}.")
            elif bounds is not None and item is not None and item not in bounds:
                raise ConfigError(f"{where}: expected a value {bounds}, got {item!r}")


def _check_selection(cfg: ExperimentConfig) -> None:
    """Only held-out train classes may choose an epoch: never the test classes, never nothing."""
    t, e, held_out = cfg.train, cfg.eval, cfg.data.validation_classes
    if e.split == "validation" and not held_out:
        raise ConfigError("eval.split: 'validation' scores the held-out train classes, but data.validation_classes is 0; "
                          "set data.validation_classes to N > 0 or a fraction such as 0.25")
    if t.select == "best":
        if not held_out:
            raise ConfigError("train.select: 'best' chooses on held-out train classes, but data.validation_classes is 0 "
                              "(nothing may choose on the test classes); set data.validation_classes to N > 0 or a fraction such as 0.25")
        if not e.every_epochs:
            raise ConfigError("train.select: 'best' chooses among the evaluations every eval.every_epochs, which is 0; "
                              "set eval.every_epochs to N >= 1")
        if t.select_metric.startswith("knn_agreement@") and not (cfg.distill and cfg.distill.terms):
            raise ConfigError(f"train.select_metric: {t.select_metric!r} compares the student's neighbours with the "
                              "teacher's, and this run has no teacher (distill.terms); choose recall@1 or map@r")
        if t.select_metric.startswith("recall@") and int(t.select_metric[len("recall@"):]) not in e.ks:
            raise ConfigError(f"train.select_metric: {t.select_metric!r} is not computed: eval.ks is {e.ks}")
    elif t.patience:
        raise ConfigError(f"train.patience: {t.patience} stops on the validation score, which only train.select: 'best' "
                          f"watches (train.select is {t.select!r}); set train.select: best or train.patience: 0")


def _check_label_free(cfg: ExperimentConfig) -> None:
    """A dataset without labels (``photos``) trains on the teacher's terms alone and is scored by kNN agreement.

    Each rule is one error naming its key: a held-out share of the photos (no test split exists), and, for a
    run that trains, the metric loss explicitly off (``train.metric_weight: 0``), distillation terms to learn
    from, and ``knn_agreement@k`` to choose and score with. ``train.epochs: 0`` without a teacher only saves the
    starting network (the label-free recipes' teacher), with nothing to score it by.
    """
    from embdistill.data.datasets import is_label_free

    t, d, name = cfg.train, cfg.distill, cfg.data.dataset
    if not is_label_free(name):
        return
    why = f"data.dataset {name!r} has no labels"
    if not cfg.data.validation_classes:
        raise ConfigError(f"data.validation_classes: {why} and no test split; hold out a share of the photos to "
                          "choose and score on, e.g. data.validation_classes: 0.25")
    if cfg.eval.split == "test":
        raise ConfigError(f"eval.split: 'test' scores the test split, and {why} and no test split; "
                          "use eval.split: auto (the held-out photos)")
    teacher = bool(d and d.terms)
    if t.epochs > 0 and t.metric_weight != 0:
        raise ConfigError(f"train.metric_weight: {why}, so the metric loss ({t.metric_loss}) has nothing to learn from; "
                          "set train.metric_weight: 0 (the teacher's terms alone train the student)")
    if t.epochs > 0 and not teacher:
        raise ConfigError(f"distill.terms: {why}; the teacher's terms are all a label-free run learns from and is scored "
                          "with: give distill.teacher and distill.terms (and run `embdistill distill`)")
    if (teacher or t.select == "best") and not t.select_metric.startswith("knn_agreement@"):
        raise ConfigError(f"train.select_metric: {t.select_metric!r} needs classes, and {why}; "
                          "use knn_agreement@10 (the teacher's neighbours the student keeps)")


def _check_name(key: str, what: str, name: str, registry: Mapping[str, Any]) -> None:
    if name not in registry:
        raise ConfigError(f"{key}: unknown {what} {name!r}; valid: {', '.join(sorted(registry))}")


def _check_backbone(key: str, name: str, args_key: str = "", args: dict[str, Any] | None = None) -> None:
    """A registered backbone with arguments its builder accepts, or ``timm/<a model timm knows>``."""
    from embdistill.models.registry import backbone_builder, list_backbones

    if name.startswith("timm/"):
        import timm

        if not timm.is_model(name.removeprefix("timm/")):
            raise ConfigError(f"{key}: timm has no model {name.removeprefix('timm/')!r} (timm.list_models() lists them)")
        return
    builder = backbone_builder(name)
    if builder is None:
        raise ConfigError(f"{key}: unknown backbone {name!r}; valid: {', '.join(list_backbones())} or timm/<any timm model>")
    if args is not None:
        _check_call(args_key, f"backbone {name!r}", builder, args, provided=("pretrained",))


def _check_call(key: str, what: str, fn: Callable[..., Any], args: dict[str, Any], provided: tuple[str, ...] = ()) -> None:
    """``args`` must be keyword arguments ``fn`` accepts, of the types it declares, with every required one
    given (``provided``: filled in by the caller, e.g. sizes read off the networks)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = {name: p for name, p in inspect.signature(fn).parameters.items()
              if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve: check names only
        hints = {}
    for name, value in args.items():
        if name not in params:
            valid = [n for n in params if n not in provided]
            raise ConfigError(f"{key}.{name}: not an argument of {what}; valid: {', '.join(valid) or '(none)'}")
        if name in hints:
            _coerce(value, hints[name], f"{key}.{name}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in args and n not in provided]
    if missing:
        raise ConfigError(f"{key}: {what} needs argument(s) {', '.join(missing)}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
