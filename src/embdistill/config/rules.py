"""What types alone cannot check: registry names and arguments, the device, ranges, and rules across fields.

Each failure is one :class:`ConfigError` naming the key, the value and what is valid.
:func:`validate` runs on every config read (reading.from_dict); :func:`check_command`
adds what one ``embdistill`` command needs of it (``distill`` a teacher and terms);
:func:`with_held_out_count` turns a fractional ``data.validation_classes`` into the
count it means for the dataset.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any

from embdistill.config.errors import ConfigError
from embdistill.config.fields import RANGE
from embdistill.config.sections import ExperimentConfig
from embdistill.config.typecheck import coerce

__all__ = ["DEVICE_PATTERN", "check_command", "held_out_count", "validate", "with_held_out_count"]

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def validate(cfg: ExperimentConfig) -> None:
    """Check what types alone cannot: registry names, call arguments, the device, value ranges.

    The registries are imported here, not at module level, so that reading the config
    package (``embdistill.cli``'s error type) does not load every loss library.
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
    """Every field declaring a range (``metadata=at_least(0)`` and the like, see fields.py) holds a value in it.

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
        if t.select_metric == "asymmetric_recall@1" and not _trains_into_teacher_space(cfg):
            raise ConfigError("train.select_metric: 'asymmetric_recall@1' scores the student's queries on the teacher's "
                              "gallery, which needs a student trained into the teacher's space: add the absolute "
                              "teacher term (distill.terms: [{name: absolute}] or asymmetric_contrastive) with a weight > 0")
        if t.select_metric.startswith("recall@") and int(t.select_metric[len("recall@"):]) not in e.ks:
            raise ConfigError(f"train.select_metric: {t.select_metric!r} is not computed: eval.ks is {e.ks}")
    elif t.patience:
        raise ConfigError(f"train.patience: {t.patience} stops on the validation score, which only train.select: 'best' "
                          f"watches (train.select is {t.select!r}); set train.select: best or train.patience: 0")


def _trains_into_teacher_space(cfg: ExperimentConfig) -> bool:
    """Whether a term of the run pulls the student onto the teacher's embeddings (teacher_space.teacher_space_of)."""
    from embdistill.losses.distill import DISTILL_LOSSES, AbsoluteTeacherLoss

    terms = cfg.distill.terms if cfg.distill else []
    return any(issubclass(DISTILL_LOSSES.get(term.name, object), AbsoluteTeacherLoss) and term.weight > 0 for term in terms)


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
            coerce(value, hints[name], f"{key}.{name}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in args and n not in provided]
    if missing:
        raise ConfigError(f"{key}: {what} needs argument(s) {', '.join(missing)}")


def check_command(cfg: ExperimentConfig, distill: bool) -> None:
    """What ``embdistill distill`` (``distill``) or ``embdistill train`` needs of the config: a teacher and
    terms for the one, no ``distill`` section for the other."""
    if distill and (cfg.distill is None or not cfg.distill.teacher):
        raise ConfigError("distill needs a teacher checkpoint: set distill.teacher=PATH (a run of `embdistill train`)")
    if distill and not cfg.distill.terms:
        raise ConfigError("distill.terms is empty: name at least one term, e.g. distill.terms=[{name: relative}]")
    if not distill and cfg.distill is not None:
        raise ConfigError("this config has a `distill` section: run it with `embdistill distill`")
