"""Choosing an epoch on held-out train classes and scoring the test classes once (train.select, eval.split).

The real runs train MobileNetV1-0.25 at 64 px on 6 CUB train species (2 of them held
out) and score 3 test species, 2 steps an epoch. Which epoch wins on real scores of
such a run is arbitrary, so where a test needs a particular winner the value the
selection *sees* is scripted (``_scripted``); the images are still embedded and
scored for real, and the test classes always are.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, tiny_overrides
from embdistill.config import ConfigError, held_out_count, load_config, to_dict, with_held_out_count
from embdistill.data.datasets import DatasetError
from embdistill.engine.train import loop as train_module
from embdistill.checkpoints import load_checkpoint, run_checkpoint, save_checkpoint
from embdistill.engine.persist.test_embeddings import load_test_embeddings
from embdistill.engine.scoring.command import evaluate_checkpoint
from embdistill.engine.batches.loaders import evaluation_set, load_splits, run_split
from embdistill.engine.persist.rundir import finished_with, resume_checkpoint
from embdistill.engine.persist.runlog import read_log
from embdistill.engine.train.epoch_selection import Selection
from embdistill.engine.train.signals import Interrupted
from embdistill.engine.train import run
from embdistill.report import write_report

STUDENT = REPO / "configs" / "cub100" / "mobilenet025.yaml"
# What the selection sees as validation R@1 after each epoch: best at 2, then 2 evaluations without a better one.
SCRIPT = {1: 0.30, 2: 0.50, 3: 0.40, 4: 0.45, 5: 0.90, 6: 0.95}
CHOOSING = {"data.validation_classes": 2, "eval.split": "test", "eval.every_epochs": 1, "train.epochs": 6,
            "train.select": "best", "train.patience": 2}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def small_cub(tmp_path_factory, cub100) -> Path:
    """The CUB metadata of the first 6 train and first 3 test species; the image folders are symlinks."""
    root = tmp_path_factory.mktemp("small_cub")
    (root / "images").mkdir()
    lines = (cub100 / "classes.txt").read_text().splitlines()
    ids = [line.split()[0] for line in lines]
    keep = set([i for i in ids if int(i) <= 100][:6] + [i for i in ids if int(i) > 100][:3])  # cub200: ids > 100 test
    labels = [line for line in (cub100 / "image_class_labels.txt").read_text().splitlines() if line.split()[1] in keep]
    images = {line.split()[0] for line in labels}
    rows = [line for line in (cub100 / "images.txt").read_text().splitlines() if line.split()[0] in images]
    (root / "classes.txt").write_text("\n".join(line for line in lines if line.split()[0] in keep) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "images.txt").write_text("\n".join(rows) + "\n")
    for folder in sorted({row.split()[1].split("/")[0] for row in rows}):
        (root / "images" / folder).symlink_to(cub100 / "images" / folder)
    return root


def _config(tmp_path: Path, cub100: Path, data: Path, name: str, **values):
    return load_config(STUDENT, tiny_overrides(tmp_path, cub100, name, **{"data.root": data, **values}))


def _scripted(monkeypatch) -> None:
    """The selection sees SCRIPT's R@1 for each epoch instead of the real one (every other metric is real)."""
    observe = Selection.observe
    monkeypatch.setattr(Selection, "observe", lambda self, epoch, metrics: observe(
        self, epoch, {**metrics, "recall@1": SCRIPT[epoch]}))


def _record_evaluations(monkeypatch, cfg) -> list[dict]:
    """Every embedding of an evaluation set by the trainer: which split, by which function, of which weights, when."""
    splits = load_splits(cfg.data, scored="test")
    names = {"validation": set(splits.validation.class_names), "test": set(splits.eval.class_names)}
    calls: list[dict] = []

    def recording(name, original):
        def wrapper(model, loader, *args, **kwargs):
            classes = set(loader.dataset.items.class_names)
            steps = [r for r in read_log(cfg.run_dir) if r["kind"] == "step"]
            calls.append({"fn": name, "split": next(s for s, c in names.items() if c == classes),
                          "weights": {k: v.clone() for k, v in model.state_dict().items()}, "steps": len(steps)})
            return original(model, loader, *args, **kwargs)
        return wrapper

    for name in ("evaluate_embedder", "embed_loader"):
        monkeypatch.setattr(train_module, name, recording(name, getattr(train_module, name)))
    return calls


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _summary(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "summary.yaml").read_text())


METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision")


# --------------------------------------------------------------------------- config and rule, no images


def test_choosing_needs_held_out_classes_and_evaluations():
    with pytest.raises(ConfigError, match=r"train.select: 'best' .*data.validation_classes is 0 .*test classes"):
        load_config(None, ["train.select=best", "eval.every_epochs=1"])
    with pytest.raises(ConfigError, match=r"train.select: 'best' .*eval.every_epochs, which is 0"):
        load_config(None, ["train.select=best", "data.validation_classes=4"])
    with pytest.raises(ConfigError, match=r"train.patience: 3 .*train.select is 'last'"):
        load_config(None, ["train.patience=3", "data.validation_classes=4", "eval.every_epochs=1"])
    with pytest.raises(ConfigError, match=r"train.patience: expected a value >= 0, got -1"):
        load_config(None, ["train.patience=-1"])
    with pytest.raises(ConfigError, match=r"eval.split: 'validation' .*data.validation_classes is 0"):
        load_config(None, ["eval.split=validation"])
    with pytest.raises(ConfigError, match=r"train.select_metric: 'recall@1' is not computed: eval.ks is \[2, 4\]"):
        load_config(None, ["train.select=best", "data.validation_classes=4", "eval.every_epochs=1", "eval.ks=[2, 4]"])
    with pytest.raises(ConfigError, match=r"train.select_metric: expected one of 'recall@1', 'map@r', "
                                          r"'knn_agreement@10', 'asymmetric_recall@1', got 'nmi'"):
        load_config(None, ["train.select_metric=nmi"])
    with pytest.raises(ConfigError, match=r"train.select_metric: 'knn_agreement@10' compares .* no teacher"):
        load_config(None, ["train.select=best", "data.validation_classes=4", "eval.every_epochs=1",
                           "train.select_metric=knn_agreement@10"])


def test_a_fraction_holds_out_that_share_of_the_train_classes(tmp_path):
    # A quarter, rounded; at least 2 (one class alone scores R@1 = 1 every epoch), at least 2 left to train on.
    assert [held_out_count(0.25, n) for n in (4, 5, 8, 10, 44, 58)] == [2, 2, 2, 2, 11, 14]
    assert (held_out_count(0.9, 10), held_out_count(3, 100)) == (8, 3)  # a count is taken as it is
    with pytest.raises(DatasetError, match=r"data.validation_classes=0.25 .* needs at least 4 .* there are 3"):
        held_out_count(0.25, 3)
    # The commands turn it into the count for the dataset they read, once, before the run starts.
    root = tmp_path / "photos"
    for c in range(12):  # 6 train classes, 6 test
        (root / f"class{c:02d}").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / f"class{c:02d}" / "a.png")
    cfg = load_config(None, ["data.dataset=folder", f"data.root={root}", "data.validation_classes=0.5",
                             "train.select=best", "eval.every_epochs=1"])
    assert with_held_out_count(cfg).data.validation_classes == 3
    assert with_held_out_count(with_held_out_count(cfg)) == with_held_out_count(cfg)


def test_the_rule_by_hand(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "data.validation_classes=2", "eval.every_epochs=2",
                             "train.epochs=7", "train.select=best", "train.patience=2", "eval.split=test"])
    selection = Selection(cfg, held_out=True, scored_at_end="test", writes=False)
    assert [e for e in range(1, 8) if selection.due(e)] == [2, 4, 6, 7]  # and always the last epoch
    # 0.3 at 2, better 0.5 at 4; 6 ties it (the earlier epoch stays) and 7 is worse: two without a better one.
    assert [selection.observe(e, {"recall@1": v}) for e, v in ((2, 0.3), (4, 0.5), (6, 0.5))] == [True, True, False]
    assert (selection.best_epoch, selection.since_best, selection.stopped) == (4, 1, False)
    assert selection.observe(7, {"recall@1": 0.4}) is False and selection.stopped
    assert selection.summary(7) == {"epoch": 4, "selected": {"metric": "recall@1", "validation": 0.5,
                                                             "epochs_trained": 7, "stopped_early": True}}
    # select: last scored on the held-out classes themselves (what data.validation_classes alone meant):
    # the last epoch is left to the final score, as before train.select existed.
    last = load_config(None, [f"output_dir={tmp_path}", "data.validation_classes=2", "eval.every_epochs=2", "train.epochs=7"])
    assert run_split(last) == "validation"
    assert [e for e in range(1, 8) if Selection(last, True, "validation").due(e)] == [2, 4, 6]
    assert [e for e in range(1, 8) if Selection(last, True, "test").due(e)] == [2, 4, 6, 7]  # the curve's end


def test_old_configs_keep_meaning_the_held_out_classes(tmp_path):
    # A config.yaml or checkpoint written before eval.split and train.select existed: validation_classes
    # meant "score the held-out classes"; read through today's defaults it still describes that run.
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=tuning", "data.validation_classes=14", "eval.every_epochs=1"])
    assert run_split(cfg) == "validation"
    old = to_dict(cfg)
    for section, key in (("eval", "split"), ("train", "select"), ("train", "select_metric"), ("train", "patience")):
        del old[section][key]
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    (cfg.run_dir / "summary.yaml").write_text("split: validation\nrecall@1: 0.5\n")
    assert finished_with(cfg)
    assert not finished_with(load_config(None, [f"output_dir={tmp_path}", "name=tuning", "data.validation_classes=14",
                                                "eval.every_epochs=1", "eval.split=test"]))
    save_checkpoint(cfg.run_dir / "last.pt", {"model_config": {}, "model_state": {}, "image_size": 64, "resume": {},
                                              "config": old})
    assert resume_checkpoint(cfg)["config"] == old
    # How often a choosing run evaluates changes what it chooses: not a setting a resume may change.
    best = ["data.validation_classes=14", "train.select=best", "eval.split=test"]
    chooser = load_config(None, [f"output_dir={tmp_path}", "name=chooser", "eval.every_epochs=1", *best])
    chooser.run_dir.mkdir()
    save_checkpoint(chooser.run_dir / "last.pt", {"model_config": {}, "model_state": {}, "image_size": 64, "resume": {},
                                                  "config": to_dict(chooser)})
    with pytest.raises(ConfigError, match=r"eval.every_epochs: 1 -> 2"):
        resume_checkpoint(load_config(None, [f"output_dir={tmp_path}", "name=chooser", "eval.every_epochs=2", *best]))


# --------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def chosen(tmp_path_factory, cub100, small_cub):
    """A choosing run (SCRIPT: best at epoch 2, stopped after 4 of 6), its evaluations recorded."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _scripted(monkeypatch)
        cfg = _config(tmp_path_factory.mktemp("chosen"), cub100, small_cub, "chosen", **CHOOSING,
                      **{"train.keep_epochs": True})
        calls = _record_evaluations(monkeypatch, cfg)
        result = run(cfg, progress=False)
    return result, calls


@pytest.mark.slow
def test_the_test_classes_are_scored_once_at_the_end_on_the_chosen_weights(chosen):
    result, calls = chosen
    run_dir = result.run_dir
    best, last = load_checkpoint(run_dir / "best.pt"), load_checkpoint(run_dir / "last.pt")
    # Early stop: epochs 3 and 4 brought nothing better than epoch 2, so epochs 5 and 6 never ran.
    records = read_log(run_dir)
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 9))
    assert last["epoch"] == 4 and best["epoch"] == 2 and best["selected"] == {"metric": "recall@1", "value": 0.5, "epoch": 2}
    assert "optimizer" not in best  # weights and what rebuilds them; resuming reads last.pt
    assert not _same_weights(best["model_state"], last["model_state"])
    # train.keep_epochs: every epoch's weights as best.pt holds them, to score any epoch afterwards.
    kept = sorted(p.name for p in (run_dir / "epochs").iterdir())
    assert kept == ["epoch_001.pt", "epoch_002.pt", "epoch_003.pt", "epoch_004.pt"]
    epoch_2, epoch_4 = load_checkpoint(run_dir / "epochs" / kept[1]), load_checkpoint(run_dir / "epochs" / kept[3])
    assert epoch_2["epoch"] == 2 and _same_weights(epoch_2["model_state"], best["model_state"]) and "optimizer" not in epoch_2
    assert epoch_4["epoch"] == 4 and _same_weights(epoch_4["model_state"], last["model_state"])
    # The held-out classes were scored after every epoch, the test classes once: last, after every step,
    # on best.pt's weights. No test score existed while anything was being chosen.
    assert [(c["fn"], c["split"]) for c in calls] == [("evaluate_embedder", "validation")] * 4 + [("embed_loader", "test")]
    assert [c["steps"] for c in calls] == [2, 4, 6, 8, 8]
    assert _same_weights(calls[-1]["weights"], best["model_state"])
    assert _same_weights(calls[1]["weights"], best["model_state"])  # epoch 2's validation score was of these weights
    evals = [r for r in records if r["kind"] == "eval"]
    assert [(r["epoch"], r["split"]) for r in evals] == [(1, "validation"), (2, "validation"), (3, "validation"),
                                                        (4, "validation"), (2, "test")]
    assert [r for r in records if r["kind"] == "selected"] == [
        {"kind": "selected", "metric": "recall@1", "validation": 0.5, "epochs_trained": 4, "stopped_early": True, "epoch": 2}]
    summary = _summary(run_dir)
    assert summary["split"] == "test" and summary["epoch"] == 2
    assert summary["selected"] == {"metric": "recall@1", "validation": 0.5, "epochs_trained": 4, "stopped_early": True}
    assert [p["epoch"] for p in summary["validation_curve"]] == [1, 2, 3, 4]
    assert [p["recall@1"] for p in summary["validation_curve"]] == [SCRIPT[e] for e in (1, 2, 3, 4)]
    assert [p["map@r"] for p in summary["validation_curve"]] == [r["map@r"] for r in evals[:4]]  # the real scores
    # The reported test metrics are best.pt's: scored again from the file, by the run directory too.
    assert result.checkpoint == run_dir / "best.pt" == run_checkpoint(run_dir)
    again = evaluate_checkpoint(run_dir / "best.pt", split="test", device="cpu", progress=False)
    assert again["images"] == 159 and again["classes"] == 3
    assert {k: again[k] for k in METRICS} == pytest.approx({k: summary[k] for k in METRICS}, abs=1e-6)
    assert evaluate_checkpoint(run_dir, split="test", device="cpu", progress=False)["map@r"] == pytest.approx(summary["map@r"])
    assert load_test_embeddings(run_dir) is not None  # the cached test embeddings are best.pt's


@pytest.mark.slow
def test_the_report_names_the_chosen_epoch_and_the_curve(chosen, tmp_path):
    run_dir = chosen[0].run_dir
    text = write_report([run_dir], tmp_path, device="cpu").read_text()
    assert "Scored with the weights of epoch 2 of 4, stopped early: the best R@1 on the held-out train classes (50.0)." in text
    assert "| Epoch | R@1 | R@2 | R@4 | R@8 | MAP@R |" in text
    assert "| 2 (scored) | 50.0 |" in text and "| 4 | 45.0 |" in text


@pytest.mark.slow
def test_validation_every_epoch_and_test_once_without_choosing(tmp_path, cub100, small_cub, monkeypatch):
    # select: last with eval.split: test: the curve comes from the held-out classes, the last epoch included,
    # and the test classes are scored once, on the last weights.
    cfg = _config(tmp_path, cub100, small_cub, "last", **{**CHOOSING, "train.select": "last", "train.patience": 0,
                                                          "train.epochs": 2})
    calls = _record_evaluations(monkeypatch, cfg)
    result = run(cfg, progress=False)
    assert [(c["fn"], c["split"], c["steps"]) for c in calls] == [
        ("evaluate_embedder", "validation", 2), ("evaluate_embedder", "validation", 4), ("embed_loader", "test", 4)]
    assert not (result.run_dir / "best.pt").exists() and result.checkpoint == result.run_dir / "last.pt"
    summary = _summary(result.run_dir)
    assert summary["split"] == "test" and summary["epoch"] == 2 and "selected" not in summary
    assert [p["epoch"] for p in summary["validation_curve"]] == [1, 2]
    assert _same_weights(calls[-1]["weights"], load_checkpoint(result.run_dir / "last.pt")["model_state"])
    # The run's own evaluation split, for the report and `embdistill evaluate`, is the test classes.
    assert evaluation_set(cfg, embedder_normalization()).name == "test"


def _interrupt_at(monkeypatch, calls: int) -> list[int]:
    """SIGINT on the ``calls``-th loss evaluation: the loop finishes that step, checkpoints and stops."""
    from embdistill.losses import objective as objective_module

    original, count = objective_module.Objective.forward, [0]

    def forward(self, *args, **kwargs):
        count[0] += 1
        if count[0] == calls:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(objective_module.Objective, "forward", forward)
    return count


@pytest.mark.slow
def test_resume_keeps_the_best_so_far_and_the_patience_count(tmp_path, cub100, small_cub, chosen, monkeypatch):
    _scripted(monkeypatch)
    cfg = _config(tmp_path, cub100, small_cub, "chosen", **CHOOSING)  # same name: the same run, elsewhere
    count = _interrupt_at(monkeypatch, calls=7)  # step 7: epoch 4, batch 1, after epoch 3's score
    with pytest.raises(Interrupted):
        run(cfg, progress=False)
    saved = load_checkpoint(cfg.run_dir / "last.pt")["selection"]
    assert (saved["best_epoch"], saved["best"], saved["since_best"], saved["stopped"]) == (2, 0.5, 1, False)
    count[0] = -100  # disarm
    # Had the resumed run forgotten the best, epoch 4's 0.45 would win; had it forgotten the count, it would
    # train on to epoch 5 (0.90). It stops after epoch 4 with epoch 2 chosen, as the uninterrupted run did.
    resumed = run(cfg, progress=False, resume=True)
    reference = chosen[0].run_dir
    assert [r["step"] for r in read_log(cfg.run_dir) if r["kind"] == "step"] == list(range(1, 9))
    assert load_checkpoint(cfg.run_dir / "best.pt")["epoch"] == 2
    a, b = _summary(cfg.run_dir), _summary(reference)
    assert (a["epoch"], a["selected"]) == (b["epoch"], b["selected"])
    assert {k: a[k] for k in METRICS} == pytest.approx({k: b[k] for k in METRICS}, abs=1e-6)
    assert resumed.metrics == pytest.approx(chosen[0].metrics, abs=1e-6)


@pytest.mark.slow
def test_a_run_killed_between_last_pt_and_best_pt_resumes_with_the_right_best(tmp_path, cub100, small_cub, chosen,
                                                                            monkeypatch):
    class Killed(Exception):
        pass

    _scripted(monkeypatch)
    save_best = Selection.save_best

    def dies_at_epoch_2(self, payload):
        if self.best_epoch == 2:
            raise Killed  # last.pt (epoch 2, choosing epoch 2) is written; best.pt still holds epoch 1
        save_best(self, payload)

    monkeypatch.setattr(Selection, "save_best", dies_at_epoch_2)
    cfg = _config(tmp_path, cub100, small_cub, "chosen", **CHOOSING)
    with pytest.raises(Killed):
        run(cfg, progress=False)
    assert load_checkpoint(cfg.run_dir / "best.pt")["epoch"] == 1
    assert load_checkpoint(cfg.run_dir / "last.pt")["selection"]["best_epoch"] == 2
    monkeypatch.setattr(Selection, "save_best", save_best)
    run(cfg, progress=False, resume=True)
    best, reference = load_checkpoint(cfg.run_dir / "best.pt"), load_checkpoint(chosen[0].run_dir / "best.pt")
    assert best["epoch"] == 2
    for key in reference["model_state"]:
        torch.testing.assert_close(best["model_state"][key], reference["model_state"][key], rtol=1e-5, atol=1e-7)


def embedder_normalization():
    from embdistill.data.transforms import IMAGENET

    return IMAGENET


def test_a_run_directory_exports_under_the_name_of_the_checkpoint_it_stands_for(tmp_path: Path) -> None:
    from embdistill.deploy.export import default_export_path, default_quantized_path

    (tmp_path / "last.pt").write_bytes(b"")
    assert default_export_path(tmp_path, "onnx") == tmp_path / "last.onnx"
    (tmp_path / "best.pt").write_bytes(b"")  # the run chose an epoch: it is scored and exported as best.pt
    assert default_export_path(tmp_path, "onnx") == tmp_path / "best.onnx"
    assert default_export_path(tmp_path, "torchscript") == tmp_path / "best.torchscript.pt"
    assert default_quantized_path(tmp_path, "int8") == tmp_path / "best.int8.onnx"


def test_choosing_by_agreement_with_the_teacher(tmp_path, cub100, small_cub):
    """train.select_metric knn_agreement@10: each held-out score has the share of the teacher's 10 nearest
    neighbours the student keeps, computed for real, and the best of them is the epoch kept."""
    teacher = run(_config(tmp_path, cub100, small_cub, "teacher", **{"train.epochs": 0, "model.dim": 32,
                                                                      "data.validation_classes": 2}),
                  progress=False).checkpoint
    cfg = _config(tmp_path, cub100, small_cub, "agreeing", **{**CHOOSING, "train.epochs": 2, "train.patience": 0,
                                                              "train.select_metric": "knn_agreement@10",
                                                              "distill.teacher": teacher,
                                                              "distill.terms": "[{name: relaxed_contrastive}]"})
    result = run(cfg, progress=False)
    summary = _summary(result.run_dir)
    curve = summary["validation_curve"]
    assert [point["epoch"] for point in curve] == [1, 2]
    assert all(0.0 <= point["knn_agreement@10"] <= 1.0 for point in curve)
    best = max(curve, key=lambda point: point["knn_agreement@10"])  # the earlier epoch on a tie
    assert summary["selected"]["metric"] == "knn_agreement@10"
    assert summary["epoch"] == best["epoch"] and summary["selected"]["validation"] == best["knn_agreement@10"]
    assert summary["split"] == "test" and "recall@1" in summary  # the test classes are scored as ever

