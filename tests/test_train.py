"""End-to-end runs on real CUB images: train, distil with every loss, cache, semi-supervised, cross-quality."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, cub_subset, tiny_overrides
from embdistill.cli import main
from embdistill.config import ConfigError, load_config
from embdistill.data.transforms import Degrade
from embdistill.checkpoints import embedder_from_checkpoint, load_checkpoint
from embdistill.engine.scoring.command import evaluate_checkpoint
from embdistill.engine.batches.loaders import hidden_label_mask, load_splits, train_loader
from embdistill.engine.persist.runlog import read_log
from embdistill.engine.train import NonFiniteLossError, run
from embdistill.engine.batches.views import to_input
from embdistill.report import write_run_report

STUDENT = REPO / "configs" / "cub100" / "mobilenet025.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, cub100) -> Path:
    """A small but real teacher: MobileNetV1-0.5 trained for two steps on real birds."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config(STUDENT, tiny_overrides(out, cub100, "teacher", **{"model.backbone_args": "{width: 0.5}", "model.dim": 64}))
    return run(cfg, progress=False).checkpoint


def _distill(tmp_path: Path, cub100: Path, teacher: Path, name: str, terms: str, *extra: str, **values) -> load_config:
    overrides = tiny_overrides(tmp_path, cub100, name, **values) + [f"distill.teacher={teacher}", f"distill.terms={terms}", *extra]
    return load_config(STUDENT, overrides)


def test_train_writes_a_complete_run_dir(tmp_path, cub100):
    result = run(load_config(STUDENT, tiny_overrides(tmp_path, cub100, "alone")), progress=False)
    run_dir = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.yaml", "last.pt", "test_embeddings.npz"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "loss_curve.png").exists()  # pictures are the caller's step after training
    write_run_report(run_dir, device="cpu")
    for name in ("loss_curve.png", "stats.json", "retrieval_grid.png"):
        assert (run_dir / name).is_file(), name
    records = read_log(run_dir)
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["split"] == "validation"
    assert set(result.metrics) == {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision"}
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert result.metrics["recall@1"] <= result.metrics["recall@2"] <= result.metrics["recall@8"]
    summary = yaml.safe_load((run_dir / "summary.yaml").read_text())
    assert summary["recall@1"] == result.metrics["recall@1"]


def test_checkpoint_evaluates_to_the_same_metrics(tmp_path, cub100):
    result = run(load_config(STUDENT, tiny_overrides(tmp_path, cub100, "alone")), progress=False)
    payload = load_checkpoint(result.run_dir)
    model = embedder_from_checkpoint(payload)
    assert model.dim == 512 and payload["image_size"] == 64
    # `evaluate` on the same held-out classes is the "all" split of the train classes minus the rest:
    # compare instead on the official test split, once through the CLI and once through the function.
    metrics = evaluate_checkpoint(result.checkpoint, split="test", progress=False)
    assert metrics["images"] == 2474 and metrics["classes"] == 42
    assert main(["evaluate", str(result.run_dir), "--no-progress"]) == 0
    assert (result.run_dir / "eval_cub200_test.json").is_file()


@pytest.mark.parametrize(
    "terms",
    [
        "[{name: absolute}]",
        "[{name: relative, weight: 0.5}, {name: relative, args: {reduction: frobenius}}]",
        "[{name: rkd_distance}, {name: rkd_angle, weight: 2.0}, {name: darkrank}]",
        "[{name: hint, args: {student_layer: stage3, teacher_layer: stage3}}, "
        "{name: attention, args: {student_layers: [stage2, stage4], teacher_layers: [stage2, stage4]}}]",
    ],
)
def test_every_distillation_term_trains_and_is_logged(tmp_path, cub100, teacher_ckpt, terms):
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "distilled", terms)
    result = run(cfg, progress=False)
    steps = [r for r in read_log(result.run_dir) if r["kind"] == "step"]
    names = [k for k in steps[-1] if k not in ("kind", "epoch", "step", "lr", "images_per_s", "spread", "loss", "metric")]
    assert len(names) == len(cfg.distill.terms)
    for record in steps:
        assert all(math.isfinite(float(record[k])) for k in names + ["loss", "metric"])
        expected = record["metric"] + sum(t.weight * record[n] for t, n in zip(cfg.distill.terms, names))
        assert record["loss"] == pytest.approx(expected, abs=1e-4)


def test_a_term_with_until_epoch_trains_its_epochs_and_is_only_logged_after(tmp_path, cub100, teacher_ckpt, capsys):
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "until", "[{name: relative, weight: 2.0, until_epoch: 1}, {name: absolute}]",
                   **{"train.epochs": 2})
    result = run(cfg, progress=False)
    assert "distillation term relative (λ=2.0, the first 1 epochs)" in capsys.readouterr().out
    steps = [r for r in read_log(result.run_dir) if r["kind"] == "step"]
    assert [r["epoch"] for r in steps] == [0, 0, 1, 1]
    for record in steps:
        relative = 2.0 * record["relative"] if record["epoch"] == 0 else 0.0  # logged in both epochs, trained in the first
        assert record["relative"] > 0 and record["loss"] == pytest.approx(record["metric"] + relative + record["absolute"], abs=1e-4)


def test_absolute_teacher_with_different_sizes_learns_a_projection(tmp_path, cub100, teacher_ckpt):
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "projected", "[{name: absolute}]", **{"model.dim": 32})
    result = run(cfg, progress=False)
    objective = torch.load(result.checkpoint, weights_only=False)["objective"]
    assert objective["terms.absolute.projection.weight"].shape == (64, 32)


def test_absolute_teacher_without_projection_names_the_sizes(tmp_path, cub100, teacher_ckpt):
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "bad", "[{name: absolute, args: {project: false}}]", **{"model.dim": 32})
    with pytest.raises(ConfigError, match=r"distill.terms\[0\] \(absolute\): .*(32.*64|64.*32)"):
        run(cfg, progress=False)


def test_teacher_cache_reproduces_the_uncached_run(tmp_path, cub100, teacher_ckpt):
    """Same views with and without the cache: same weights; the cache runs the teacher once per view."""
    common = dict(**{"train.epochs": 3})
    cached = run(_distill(tmp_path, cub100, teacher_ckpt, "cached", "[{name: relative}]",
                          "distill.cache_teacher=true", "distill.cache_views=3", **common), progress=False)
    uncached = run(_distill(tmp_path, cub100, teacher_ckpt, "uncached", "[{name: relative}]",
                            "distill.cache_teacher=false", **common), progress=False)
    a, b = (torch.load(r.checkpoint, weights_only=False)["model_state"] for r in (cached, uncached))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert cached.metrics == pytest.approx(uncached.metrics)
    # One cached view for every epoch: the teacher runs once per distinct image, never twice for one.
    reused_cfg = _distill(tmp_path, cub100, teacher_ckpt, "reused", "[{name: relative}]",
                          "distill.cache_teacher=true", "distill.cache_views=1", **common)
    reused = run(reused_cfg, progress=False)
    _, _, sampler = train_loader(reused_cfg, load_splits(reused_cfg.data).train, embedder_normalization())
    distinct = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        distinct.update(i for batch in sampler for i in batch)
    counts = {r.run_dir.name: yaml.safe_load((r.run_dir / "summary.yaml").read_text())["teacher_forward_images"]
              for r in (cached, uncached, reused)}
    assert counts["uncached"] == counts["cached"] == 3 * 2 * 32
    assert counts["reused"] == len(distinct) < 3 * 2 * 32


def test_semi_supervised_batches_mix_unlabelled_images(tmp_path, cub100, teacher_ckpt):
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "semi", "[{name: relative}]",
                   "distill.semi_supervised={hide_label_fraction: 0.5, unlabelled_per_batch: 8}")
    splits = load_splits(cfg.data)
    hidden = hidden_label_mask(splits.train, 0.5, cfg.seed)
    assert 0 < hidden.sum() < len(hidden)
    labels = np.where(hidden, -1, splits.train.labels)
    loader, _, _ = train_loader(cfg, splits.train, embedder_normalization(), labels)
    for _, _, batch_labels, indices, _ in loader:
        assert not hidden[indices.numpy()].any(), "an unlabelled image entered the class-balanced batches"
        assert (batch_labels >= 0).all()
    result = run(cfg, progress=False)
    assert yaml.safe_load((result.run_dir / "summary.yaml").read_text())["teacher_forward_images"] == 2 * (32 + 8)


def test_semi_supervised_from_a_folder(tmp_path, cub100, teacher_ckpt):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for path in sorted((cub100 / "images").glob("1*/*.jpg"))[:10]:
        (folder / path.name).symlink_to(path)
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "semi_folder", "[{name: absolute}]",
                   f"distill.semi_supervised={{folder: {folder}, unlabelled_per_batch: 4}}")
    result = run(cfg, progress=False)
    summary = yaml.safe_load((result.run_dir / "summary.yaml").read_text())
    assert summary["teacher_forward_images"] == 2 * (32 + 4)
    assert "transductive" not in summary  # class 100 is a train class: no test image among them


def test_unlabelled_test_images_mark_the_run_transductive(tmp_path, cub100, teacher_ckpt, capsys):
    from embdistill import report

    folder = tmp_path / "unlabelled"
    (folder / "nested").mkdir(parents=True)
    for path in sorted((cub100 / "images").glob("100.*/*.jpg"))[:3]:  # train images
        (folder / path.name).symlink_to(path)
    for path in sorted((cub100 / "images").glob("101.*/*.jpg"))[:5]:  # test images, at another depth
        (folder / "nested" / path.name).symlink_to(path)
    root = cub_subset(tmp_path, cub100, per_split=8, per_class=8)  # links: the same files as cub100's, resolved
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "semi_test", "[{name: relative}]",
                   f"distill.semi_supervised={{folder: {folder}, unlabelled_per_batch: 4}}",
                   **{"eval.split": "test", "data.root": root})
    result = run(cfg, progress=False)
    said = [line for line in capsys.readouterr().out.splitlines() if "transductive" in line]
    assert said == [f"[semi_test] transductive: 5 of the 8 unlabelled images in distill.semi_supervised.folder are "
                    f"test images of cub200 {root}; the test scores will be marked transductive"]
    summary = yaml.safe_load((result.run_dir / "summary.yaml").read_text())
    assert summary["transductive"] is True and summary["transductive_test_images"] == 5
    md = report.write_report([result.run_dir], device="cpu")
    text = md.read_text()
    assert "| semi_test (transductive) |" in text
    assert "**Transductive:** semi_test trained on 5 test image(s) without their labels" in text
    assert "transductive" in (md.parent / "report.csv").read_text().splitlines()[0].split(",")


def test_cross_quality_student_sees_degraded_copies_of_the_same_crop(tmp_path, cub100, teacher_ckpt):
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "cq", "[{name: relative}]",
                   "distill.cross_quality={resolution: 16}")
    splits = load_splits(cfg.data)
    loader, views, _ = train_loader(cfg, splits.train, embedder_normalization())
    student, teacher = (to_input(x, embedder_normalization(), torch.device("cpu")) for x in next(iter(loader))[:2])
    assert student.shape == teacher.shape
    assert not torch.equal(student, teacher)

    def detail(x: torch.Tensor) -> float:  # high-frequency energy: a blurred copy has far less
        return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())

    assert detail(student) < 0.6 * detail(teacher)
    # Same crop: the degraded student view is close to the clean one blurred, not another region.
    blurred = torch.nn.functional.avg_pool2d(teacher, 4)
    assert float((torch.nn.functional.avg_pool2d(student, 4) - blurred).abs().mean()) < 0.25
    result = run(cfg, progress=False)
    assert (result.run_dir / "last.pt").is_file()


def test_teacher_sees_the_same_crop_at_its_own_size(tmp_path, cub100, teacher_ckpt):
    cfg = _distill(tmp_path, cub100, teacher_ckpt, "hires", "[{name: relative}]", "distill.teacher_image_size=96")
    splits = load_splits(cfg.data)
    loader, _, _ = train_loader(cfg, splits.train, embedder_normalization())
    student, teacher = (to_input(x, embedder_normalization(), torch.device("cpu")) for x in next(iter(loader))[:2])
    assert teacher.shape[-2:] == (96, 96) and student.shape[-2:] == (64, 64)
    # The same box rendered straight at each size (engine/batches/views.py ViewCrop): shrinking the teacher's
    # crop gives the student's pixels up to resampling differences.
    shrunk = torch.nn.functional.interpolate(teacher, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    assert (student - shrunk).abs().mean() < 0.05
    result = run(cfg, progress=False)
    assert (result.run_dir / "last.pt").is_file()


def test_teacher_image_size_below_the_students_is_an_error(tmp_path, cub100, teacher_ckpt):
    with pytest.raises(ConfigError, match=r"distill.teacher_image_size.*>= data.image_size \(64\).*32"):
        _distill(tmp_path, cub100, teacher_ckpt, "lores", "[{name: relative}]", "distill.teacher_image_size=32")


def test_loader_workers_give_the_same_batches(tmp_path, cub100):
    cfg0 = load_config(STUDENT, tiny_overrides(tmp_path, cub100, "w0"))
    cfg2 = load_config(STUDENT, tiny_overrides(tmp_path, cub100, "w2", **{"data.num_workers": 2}))
    splits = load_splits(cfg0.data)
    batches = []
    for cfg in (cfg0, cfg2):
        loader, views, sampler = train_loader(cfg, splits.train, embedder_normalization())
        sampler.set_epoch(1)
        views.set_view(1)
        batches.append(next(iter(loader)))
    torch.testing.assert_close(batches[0][0], batches[1][0])
    assert torch.equal(batches[0][4], torch.ones(32, dtype=torch.long))


def test_nan_loss_stops_with_the_step_and_terms(tmp_path, cub100, teacher_ckpt, monkeypatch):
    from embdistill.losses import objective as objective_module

    original = objective_module.Objective.forward

    def poisoned(self, student, labels, teacher=None):
        parts = original(self, student, labels, teacher)
        parts["metric"] = parts["metric"] * float("nan")
        parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(objective_module.Objective, "forward", poisoned)
    cfg = load_config(STUDENT, tiny_overrides(tmp_path, cub100, "nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 0 .*'metric': nan"):
        run(cfg, progress=False)
    cfg = load_config(STUDENT, tiny_overrides(tmp_path, cub100, "nan_skip", **{"train.nan_policy": "skip"}))
    result = run(cfg, progress=False)
    assert len([r for r in read_log(result.run_dir) if r["kind"] == "skipped_step"]) == 2


def test_degrade_keeps_size():
    from PIL import Image

    image = Image.new("RGB", (64, 48), (200, 10, 10))
    assert Degrade(resolution=16)(image).size == (64, 48)


def embedder_normalization():
    from embdistill.data.transforms import IMAGENET

    return IMAGENET
