"""The experiment configuration, in one package: every section, how it is read, and every rule it must meet.

``load_config(path, overrides)`` reads a YAML file (with its ``_base_`` chain) and
``key.sub=value`` overrides into one checked ``ExperimentConfig``. Everything is checked
when the config is read, before any work starts: unknown keys, values of the wrong type,
values outside a fixed set of choices (the ``Literal`` fields), numbers outside the range
declared beside their field, names looked up in a registry (dataset, backbone, metric and
distillation losses, and those losses' arguments), the device string, and rules across
fields. Each failure is one :class:`ConfigError` naming the key.

==============  ==============================================================================
sections.py     every config dataclass (``ExperimentConfig``, ``ModelConfig``, ``TrainConfig``...)
fields.py       what a field declares beside itself: its range, whether a resume may change it
typecheck.py    a YAML value checked against a field's annotation; sections built from mappings
reading.py      YAML, ``_base_``, overrides: ``load_config``, ``from_dict``, ``to_dict``
rules.py        registry names, the device, ranges, rules across fields and per command
resume.py       the keys a resumed or reused run may change; how two configs differ
errors.py       ``ConfigError``
==============  ==============================================================================

The package sits above ``data``, ``models``, ``losses`` and ``evaluation`` (it reads
their registries and choice lists) and below ``checkpoints``, ``engine`` and the
commands; nothing below it imports it (tests/test_imports.py checks).
"""
from embdistill.config.errors import ConfigError
from embdistill.config.reading import apply_overrides, from_dict, load_config, read_yaml, to_dict
from embdistill.config.resume import REUSE_MAY_CHANGE, RESUME_MAY_CHANGE, config_differences, may_change_for
from embdistill.config.rules import DEVICE_PATTERN, check_command, held_out_count, validate, with_held_out_count
from embdistill.config.sections import (
    CrossQualityConfig,
    DataConfig,
    DistillConfig,
    DistillTermConfig,
    EvalConfig,
    EvalSplit,
    ExperimentConfig,
    ModelConfig,
    NanPolicy,
    Precision,
    ResizeMode,
    Schedule,
    Select,
    SelectMetric,
    SemiSupervisedConfig,
    TeacherPrecision,
    TrainConfig,
)

__all__ = [
    "DEVICE_PATTERN",
    "RESUME_MAY_CHANGE",
    "REUSE_MAY_CHANGE",
    "ConfigError",
    "CrossQualityConfig",
    "DataConfig",
    "DistillConfig",
    "DistillTermConfig",
    "EvalConfig",
    "EvalSplit",
    "ExperimentConfig",
    "ModelConfig",
    "NanPolicy",
    "Precision",
    "ResizeMode",
    "Schedule",
    "Select",
    "SelectMetric",
    "SemiSupervisedConfig",
    "TeacherPrecision",
    "TrainConfig",
    "apply_overrides",
    "check_command",
    "config_differences",
    "from_dict",
    "held_out_count",
    "load_config",
    "may_change_for",
    "read_yaml",
    "to_dict",
    "validate",
    "with_held_out_count",
]
