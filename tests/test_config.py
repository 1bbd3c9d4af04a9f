"""Experiment configs (YAML, _base_ chains, overrides, type checks) and checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from embdistill.config import (
    ConfigError,
    CrossQualityConfig,
    DistillConfig,
    DistillTermConfig,
    ExperimentConfig,
    apply_overrides,
    from_dict,
    load_config,
    read_yaml,
    to_dict,
)
from embdistill.checkpoints import (
    CheckpointError,
    checkpoint_normalization,
    embedder_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from embdistill.config import ModelConfig
from embdistill.models import create_embedder

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(overrides: list[str] | None = None, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    return str(err.value)


# --------------------------------------------------------------------------- defaults and files


def test_defaults_build():
    cfg = load_config()
    assert cfg == ExperimentConfig() == from_dict({})
    assert cfg.model == ModelConfig()
    assert cfg.distill is None
    assert cfg.train.lr == 1e-4 and cfg.eval.ks == [1, 2, 4, 8]
    assert cfg.run_dir == Path("runs") / "run"
    assert from_dict(to_dict(cfg)) == cfg


def test_base_chain_merges(tmp_path):
    write(tmp_path / "base.yaml", """
name: base
seed: 1
data: {image_size: 128, cache_images: true}
train:
  epochs: 10
  lr: 1.0e-3
  metric_loss_args: {margin: 0.2, soft: true}
""")
    write(tmp_path / "mid.yaml", """
_base_: base.yaml
name: mid
train: {epochs: 5, metric_loss_args: {margin: 0.0}}
""")
    child = write(tmp_path / "sub" / "child.yaml", """
_base_: ../mid.yaml   # relative to this file, not to the working directory
name: child
data: {image_size: 64}
""")
    cfg = load_config(child)
    assert cfg.name == "child"  # child overrides its bases
    assert cfg.seed == 1  # from the root of the chain
    assert cfg.data.image_size == 64 and cfg.data.cache_images is True  # nested dicts merge
    assert cfg.train.epochs == 5 and cfg.train.lr == 1e-3  # mid overrides base, base fills in
    assert cfg.train.metric_loss_args == {"margin": 0.0, "soft": True}
    assert "_base_" not in read_yaml(child)


def test_base_chain_switching_loss_or_backbone_drops_its_args(tmp_path):
    """A file that picks another metric loss (or backbone) must not inherit the old one's arguments."""
    write(tmp_path / "base.yaml", """
model: {backbone: mobilenet_v1, backbone_args: {width: 0.25}, pretrained: false}
train: {metric_loss: batch_hard_triplet, metric_loss_args: {margin: 0.2}}
""")
    other = write(tmp_path / "other.yaml", """
_base_: base.yaml
model: {backbone: resnet18}
train: {metric_loss: multi_similarity, metric_loss_args: {alpha: 3.0}}
""")
    same = write(tmp_path / "same.yaml", """
_base_: base.yaml
train: {metric_loss: batch_hard_triplet, metric_loss_args: {soft: true}}
""")
    cfg = load_config(other)
    assert cfg.train.metric_loss == "multi_similarity"
    assert cfg.train.metric_loss_args == {"alpha": 3.0}  # no margin from the triplet loss
    assert cfg.model.backbone_args == {}  # resnet18 has no width
    assert load_config(same).train.metric_loss_args == {"margin": 0.2, "soft": True}  # same loss: merged


def test_base_chain_errors(tmp_path):
    missing_base = write(tmp_path / "a.yaml", "_base_: nowhere.yaml\n")
    assert "nowhere.yaml" in config_error(path=missing_base)
    write(tmp_path / "loop1.yaml", "_base_: loop2.yaml\nseed: 1\n")
    loop2 = write(tmp_path / "loop2.yaml", "_base_: loop1.yaml\n")
    assert "loop" in config_error(path=loop2)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "no_such.yaml"
    message = config_error(path=missing)
    assert str(missing) in message and "does not exist" in message


def test_invalid_yaml(tmp_path):
    bad = write(tmp_path / "bad.yaml", "train: {epochs: 3\nname: [unclosed\n")
    message = config_error(path=bad)
    assert "bad.yaml" in message and "not valid YAML" in message
    listing = write(tmp_path / "list.yaml", "- a\n- b\n")
    assert "mapping" in config_error(path=listing)
    empty = write(tmp_path / "empty.yaml", "# nothing but a comment\n")
    assert load_config(empty) == ExperimentConfig()


# --------------------------------------------------------------------------- overrides


def test_overrides_parse_yaml_values(tmp_path):
    path = write(tmp_path / "c.yaml", "train: {epochs: 3, lr: 0.5}\nmodel: {backbone: mobilenet_v2}\n")
    cfg = load_config(path, [
        "train.epochs=7",
        "train.lr=1e-4",
        "train.warmup_epochs=2",
        "train.step_epochs=[3, 6]",
        "train.batches_per_epoch=null",
        "data.cache_images=true",
        "data.image_size=96",
        "eval.ks=[1, 5]",
        "model.pretrained=false",
        "model.backbone_args={width: 0.25}",
        "name=over",
    ])
    assert cfg.train.epochs == 7
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.warmup_epochs == 2.0 and isinstance(cfg.train.warmup_epochs, float)
    assert cfg.train.step_epochs == [3, 6]
    assert cfg.train.batches_per_epoch is None
    assert cfg.data.cache_images is True and cfg.data.image_size == 96
    assert cfg.eval.ks == [1, 5]
    assert cfg.model.pretrained is False and cfg.model.backbone == "mobilenet_v2"  # file value kept
    assert cfg.model.backbone_args == {"width": 0.25}
    assert cfg.name == "over"
    assert load_config(None, ["model.pretrained=weights/mine.pth"]).model.pretrained == "weights/mine.pth"


def test_yaml_11_exponent_floats_are_coerced(tmp_path):
    assert yaml.safe_load("1e-4") == "1e-4"  # the YAML 1.1 quirk the config must cope with
    cfg = load_config(write(tmp_path / "c.yaml", "train: {lr: 1e-4, weight_decay: 5e-4, backbone_lr_mult: 1}\n"))
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 5e-4
    assert all(isinstance(v, float) for v in (cfg.train.lr, cfg.train.weight_decay, cfg.train.backbone_lr_mult))
    # Only float fields: a string field keeps the text, an int field refuses it.
    assert load_config(None, ["name=1e-4"]).name == "1e-4"
    assert "train.epochs" in config_error(["train.epochs=1e3"])
    assert "train.lr" in config_error(["train.lr=fast"])


def test_overrides_do_not_touch_their_input():
    values = {"train": {"epochs": 3}}
    out = apply_overrides(values, ["train.lr=0.1", "distill.teacher=t.pt"])
    assert values == {"train": {"epochs": 3}}
    assert out == {"train": {"epochs": 3, "lr": 0.1}, "distill": {"teacher": "t.pt"}}


def test_malformed_override():
    for bad in ("train.epochs", "=3"):
        assert "key.sub=value" in config_error([bad])


# --------------------------------------------------------------------------- unknown keys, wrong types


def test_unknown_top_level_key():
    message = config_error(["epochs=3"])
    assert "'epochs'" in message
    for valid in ("name", "model", "train", "distill", "eval"):
        assert repr(valid) in message


def test_unknown_nested_key_names_the_dotted_path():
    message = config_error(["train.epoch=3"])
    assert "'train.epoch'" in message and "'epochs'" in message and "'lr'" in message
    # Inside an optional section, and inside a list of sections, the key is named too.
    message = config_error(["distill.teachr=t.pt"])
    assert "'distill.teachr'" in message and "'teacher'" in message
    message = config_error(["distill.terms=[{name: relative, wieght: 2}]"])
    assert "'distill.terms[0].wieght'" in message and "'weight'" in message
    message = config_error(["distill.cross_quality={resolution: 32, jpeg: 20}"])
    assert "'distill.cross_quality.jpeg'" in message and "'jpeg_quality'" in message


@pytest.mark.parametrize("override, key, expected", [
    ("train.epochs=ten", "train.epochs", "int"),
    ("data.image_size=1.5", "data.image_size", "int"),
    ("train.lr=true", "train.lr", "float"),
    ("train.epochs=true", "train.epochs", "int"),
    ("data.cache_images=1", "data.cache_images", "bool"),
    ("name=[a, b]", "name", "str"),
    ("eval.ks=[1, two]", "eval.ks[1]", "int"),
    ("eval.ks=4", "eval.ks", "a list"),
    ("train.metric_loss_args=[1]", "train.metric_loss_args", "a mapping"),
    ("train.batches_per_epoch=ten", "train.batches_per_epoch", "int or None"),
    ("model.pretrained=3", "model.pretrained", "bool or str"),
    ("model=resnet18", "model", "a mapping of ModelConfig"),
    ("distill.terms=[{name: hint, weight: heavy}]", "distill.terms[0].weight", "float"),
])
def test_wrong_type_names_key_and_expected_type(override, key, expected):
    message = config_error([override])
    assert message.startswith(f"{key}:"), message
    assert f"expected {expected}" in message, message


# --------------------------------------------------------------------------- optional sections


def test_distill_section_optional():
    assert load_config(None, ["distill=null"]).distill is None
    cfg = load_config(None, [
        "distill.teacher=runs/t/last.pt",
        "distill.terms=[{name: relative, weight: 2, args: {reduction: mean}}, {name: absolute}]",
        "distill.cross_quality={resolution: 32}",
    ])
    distill = cfg.distill
    assert isinstance(distill, DistillConfig) and distill.teacher == "runs/t/last.pt"
    assert all(isinstance(t, DistillTermConfig) for t in distill.terms)
    assert distill.terms[0] == DistillTermConfig("relative", 2.0, {"reduction": "mean"})
    assert isinstance(distill.terms[0].weight, float)
    assert distill.terms[1] == DistillTermConfig("absolute")
    assert distill.semi_supervised is None
    assert distill.cross_quality == CrossQualityConfig(resolution=32)
    assert from_dict(to_dict(cfg)) == cfg


def test_distill_term_needs_a_name():
    message = config_error(["distill.terms=[{weight: 1.0}]"])
    assert "distill.terms[0]" in message and "name" in message


def test_every_shipped_config_loads():
    files = sorted(CONFIGS.glob("**/*.yaml"))
    assert files, f"no configs under {CONFIGS}"
    for path in files:
        cfg = load_config(path)
        assert isinstance(cfg, ExperimentConfig), path
    if (CONFIGS / "cub100" / "student_relative.yaml").is_file():
        cfg = load_config(CONFIGS / "cub100" / "student_relative.yaml")
        assert cfg.model.backbone == "mobilenet_v2" and cfg.model.freeze_batchnorm  # from student.yaml
        assert cfg.data.image_size == 96 and cfg.data.cache_images  # student.yaml over base.yaml
        assert cfg.distill.teacher_image_size == 128
        assert [t.name for t in cfg.distill.terms] == ["relative"]


# --------------------------------------------------------------------------- checkpoints


SMALL = ModelConfig(backbone="mobilenet_v1", pretrained=False, dim=8, backbone_args={"width": 0.25})


def make_payload(seed: int = 0) -> tuple[dict, torch.nn.Module]:
    torch.manual_seed(seed)
    model = create_embedder(SMALL).eval()
    payload = {
        "model_config": to_dict(SMALL),
        "model_state": model.state_dict(),
        "normalization": (model.normalization.mean, model.normalization.std),
        "image_size": 64,
        "epoch": seed,
    }
    return payload, model


def test_checkpoint_roundtrip_reproduces_embeddings(tmp_path):
    payload, model = make_payload()
    path = tmp_path / "deep" / "run" / "last.pt"  # parents are created
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["model_config"] == payload["model_config"] and loaded["epoch"] == 0
    assert set(loaded["model_state"]) == set(payload["model_state"])
    rebuilt = embedder_from_checkpoint(loaded).eval()
    assert rebuilt.backbone.channels == model.backbone.channels
    assert checkpoint_normalization(loaded) == model.normalization
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(rebuilt.embed(x), model.embed(x))
    # A directory means its last.pt.
    assert load_checkpoint(path.parent)["epoch"] == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_checkpoint_does_not_download_even_if_trained_from_pretrained(tmp_path):
    payload, model = make_payload()
    payload["model_config"] = {**payload["model_config"], "pretrained": True}  # mobilenet_v1 would refuse
    rebuilt = embedder_from_checkpoint(payload).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(rebuilt.embed(x), model.embed(x))


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(tmp_path)  # a directory without last.pt


def test_corrupt_checkpoints(tmp_path):
    payload, _ = make_payload()
    good = tmp_path / "good.pt"
    save_checkpoint(good, payload)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    garbage = write(tmp_path / "garbage.pt", "not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(garbage)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="tensor.pt"):
        load_checkpoint(tensor)


def test_checkpoint_without_model_config(tmp_path):
    payload, _ = make_payload()
    del payload["model_config"]
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "'model_config'" in str(err.value) and "foreign.pt" in str(err.value)
    with pytest.raises(CheckpointError, match="model_config"):
        embedder_from_checkpoint(payload)


def test_checkpoint_weights_that_do_not_fit_the_config(tmp_path):
    payload, _ = make_payload()
    payload["model_config"] = {**payload["model_config"], "backbone_args": {"width": 0.5}}
    with pytest.raises(CheckpointError, match="do not fit mobilenet_v1"):
        embedder_from_checkpoint(payload)
    payload["model_config"] = {**payload["model_config"], "colour": "red"}
    with pytest.raises(CheckpointError, match="colour"):
        embedder_from_checkpoint(payload)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    first, model = make_payload(seed=1)
    save_checkpoint(path, first)
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    second, _ = make_payload(seed=2)
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, second)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary file left
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(embedder_from_checkpoint(loaded).eval().embed(x), model.embed(x))
    # And a later save that succeeds replaces it.
    save_checkpoint(path, second)
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_finished_with_reads_old_configs_through_todays_defaults(tmp_path):
    # A benchmark reuses a finished run of the same config. A config.yaml written before a key with a
    # default existed must still count as the same config, or a teacher is rerun and its bank goes stale.
    from embdistill.engine.persist.rundir import finished_with

    cfg = load_config(None, [f"output_dir={tmp_path}", "name=run", "train.epochs=2"])
    assert not finished_with(cfg)  # nothing there
    saved = to_dict(cfg)
    del saved["train"]["metric_weight"]  # as written before train.metric_weight existed
    write(cfg.run_dir / "config.yaml", yaml.safe_dump(saved))
    assert not finished_with(cfg)  # no summary.yaml: not finished
    write(cfg.run_dir / "summary.yaml", "recall@1: 0.5\n")
    assert finished_with(cfg)
    assert not finished_with(load_config(None, [f"output_dir={tmp_path}", "name=run", "train.epochs=3"]))
    # What only changes the log or its warnings does not make it another run.
    assert finished_with(load_config(None, [f"output_dir={tmp_path}", "name=run", "train.epochs=2",
                                            "train.collapse_spread=0.2", "eval.every_epochs=2"]))
    # Other images are another run, though a resumed run may find its images moved.
    assert not finished_with(load_config(None, [f"output_dir={tmp_path}", "name=run", "train.epochs=2",
                                                f"data.root={tmp_path / 'elsewhere'}"]))
    saved["train"]["no_such_key"] = 1  # a key this version does not know: not the same run
    write(cfg.run_dir / "config.yaml", yaml.safe_dump(saved))
    assert not finished_with(cfg)


def test_the_keys_a_resume_may_change_are_declared_on_their_fields() -> None:
    """``may_change("resume", "reuse")`` field metadata (config/fields.py) gives the same keys as the list it replaced."""
    from embdistill.config import REUSE_MAY_CHANGE, RESUME_MAY_CHANGE

    assert RESUME_MAY_CHANGE == {
        "name", "output_dir", "device", "threads", "data.root", "data.num_workers", "data.cache_images",
        "train.log_every", "train.checkpoint_every", "train.keep_epochs", "train.nan_policy", "train.collapse_spread",
        "eval.batch_size", "eval.every_epochs",
    }
    assert REUSE_MAY_CHANGE == RESUME_MAY_CHANGE - {"data.root"}  # a moved dataset may be resumed, not reused
