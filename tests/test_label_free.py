"""Label-free distillation: a folder of photos, no labels (issue #30; README, "A folder of photos, no labels").

The README's numbered commands for it are read from the README and run one by one through `embdistill`'s own
entry function, made tiny the way tests/test_recipes.py makes the own-photos walk-through tiny (its helpers,
imported), in a working directory holding `photos/`: 48 real cub100 photos, linked, in a mix of flat and nested
folders with no class folders. Then the exported student embeds and indexes the folder. Around it: the `photos`
reader, the random batch sampler that replaces P×K, and the config errors of a label-free run.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from embdistill.cli import main
from embdistill.config import ConfigError, load_config
from embdistill.data import DatasetError, RandomBatchSampler, is_label_free, load_dataset
from embdistill.checkpoints import load_checkpoint
from embdistill.search import load_embeddings
from test_recipes import OTHER, TINY, TRAINING, tiny

SECTION = "## A folder of photos, no labels"
RECIPES = REPO / "configs" / "recipes" / "label_free"
SPECIES, PHOTOS = 8, 6  # 48 photos: a quarter (12) held out, 36 to train on
HELD_OUT = 12
LAYOUT = ("", "trip", "trip/day 2")  # flat, nested, nested deeper (a space in a name too)
BATCH = ["train.batch_size=8"]  # random batches of 8 instead of the recipe's 64 (tiny() sets the P×K ones)


def readme_commands(section: str = SECTION) -> list[str]:
    """The `embdistill ...` commands of a README section's numbered lines, in order."""
    text = (REPO / "README.md").read_text()
    assert section in text, f"the README has no section {section!r}"
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    steps = [line for line in body.splitlines() if re.match(r"\d+\. ", line)]
    return [c for line in steps for c in re.findall(r"`(embdistill [^`]+)`", line)]


def make_photos(root: Path, cub100: Path) -> list[Path]:
    """``SPECIES x PHOTOS`` cub100 photos linked under ``root`` in the ``LAYOUT`` folders, round robin: no class folders."""
    made = []
    species = sorted((cub100 / "images").iterdir())[:SPECIES]
    images = [image for s in species for image in sorted(s.iterdir())[:PHOTOS]]
    for i, image in enumerate(images):
        folder = root / LAYOUT[i % len(LAYOUT)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"photo_{i:03d}.jpg").symlink_to(image)
        made.append(folder / f"photo_{i:03d}.jpg")
    return made


@dataclass
class Walk:
    root: Path
    runs: Path  # root / "runs/label_free"
    photos: list[Path]
    commands: list[list[str]]  # as run


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory, cub100: Path) -> Walk:
    root = tmp_path_factory.mktemp("label_free")
    photos = make_photos(root / "photos", cub100)
    (root / "configs").symlink_to(REPO / "configs")
    commands = [shlex.split(c)[1:] for c in readme_commands()]
    assert [c[0] for c in commands] == ["train", "distill", "export", "embed", "index"]
    ran = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for argv in commands:
            ran.append(tiny(argv) + (BATCH if argv[0] == "distill" else []))
            assert main(ran[-1]) == 0, ran[-1]
    return Walk(root, root / "runs" / "label_free", photos, ran)


# --------------------------------------------------------------------------- the walk-through


def test_the_teacher_is_saved_unscored(walk: Walk) -> None:
    run = walk.runs / "teacher"
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["label_free"] is True and summary["split"] == "validation"
    assert not [k for k in summary if k.startswith(("recall@", "map@r", "knn_agreement"))]  # nothing to score it by
    assert load_checkpoint(run / "last.pt")["model_config"]["backbone"] == "efficientnet_lite0"


def test_the_student_learns_from_the_teacher_alone_and_chooses_on_held_out_photos(walk: Walk) -> None:
    run = walk.runs / "distilled"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["dataset"] == "photos" and saved["data"]["validation_classes"] == HELD_OUT
    summary = yaml.safe_load((run / "summary.yaml").read_text())
    assert summary["label_free"] is True and summary["split"] == "validation"
    assert 0 <= summary["knn_agreement@10"] <= 1
    assert not [k for k in summary if k.startswith(("recall@", "map@r", "r_precision", "nmi"))]
    assert summary["selected"]["metric"] == "knn_agreement@10" and summary["selected"]["epochs_trained"] == 2
    assert [c["epoch"] for c in summary["validation_curve"]] == [1, 2]
    assert [list(c) for c in summary["validation_curve"]] == [["epoch", "knn_agreement@10"]] * 2
    assert load_checkpoint(run / "best.pt")["selected"]["epoch"] == summary["epoch"] in (1, 2)
    assert summary["teacher_forward_images"] == 0  # the bank (filled by the run's start) stood in for the teacher
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["kind"] == "step"]
    assert steps and all(s["metric"] == 0 and s["relaxed_contrastive"] > 0 for s in steps)
    assert all(s["loss"] == s["relaxed_contrastive"] for s in steps)  # λ 1, metric loss off
    stats = json.loads((run / "stats.json").read_text())
    assert stats["nmi"] is None and not (run / "retrieval_grid.png").exists()  # no classes: no NMI, no grid


def test_the_exported_student_embeds_and_indexes_every_photo(walk: Walk) -> None:
    assert (walk.runs / "distilled" / "best.int8.onnx").is_file()
    embeddings = load_embeddings(walk.runs / "photos.npy")
    assert embeddings.shape == (SPECIES * PHOTOS, 512)
    files = sorted(Path(p).name for p in (walk.runs / "photos.files.txt").read_text().splitlines())
    assert files == sorted(p.name for p in walk.photos)  # at every depth
    assert (walk.runs / "photos.faiss").is_file()


def test_evaluate_needs_a_labelled_set(walk: Walk, cub100: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = walk.runs / "distilled"
    assert main(["evaluate", str(run), "--no-progress"]) == 2
    assert "has no labels" in capsys.readouterr().err
    labelled = walk.root / "labelled"
    for species in sorted((cub100 / "images").iterdir())[-4:]:  # 2 train, 2 test species of their own
        (labelled / species.name).mkdir(parents=True)
        for image in sorted(species.iterdir())[:4]:
            (labelled / species.name / image.name).symlink_to(image)
    assert main(["evaluate", str(run), "--dataset", "folder", "--root", str(labelled), "--no-progress",
                 "--num-workers", "0"]) == 0
    result = json.loads((run / "eval_folder_test.json").read_text())
    assert result["classes"] == 2 and 0 <= result["recall@1"] <= 1


def test_evaluate_marks_scores_on_photos_it_distilled_on_as_transductive(
    walk: Walk, cub100: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A labelled set whose test classes are photos the student distilled on (linked from elsewhere) is scored,
    said in one line and marked transductive; a set of other photos is not."""
    species = sorted((cub100 / "images").iterdir())
    labelled = walk.root / "labelled_seen"
    # folder reader: the first half of the class folders (by name) train, the second half test
    for name, source in (("a_unseen", species[-1]), ("b_unseen", species[-2]), ("y_seen", species[0]), ("z_seen", species[1])):
        (labelled / name).mkdir(parents=True)
        for image in sorted(source.iterdir())[:PHOTOS]:  # the walk's photos are each species' first PHOTOS
            (labelled / name / image.name).symlink_to(image)
    monkeypatch.chdir(walk.root)  # the run's data.root ("photos") is relative to where it ran
    assert main(["evaluate", "runs/label_free/distilled", "--dataset", "folder", "--root", str(labelled),
                 "--no-progress", "--num-workers", "0"]) == 0
    assert f"transductive: {2 * PHOTOS} of the {2 * PHOTOS} scored images" in capsys.readouterr().out
    result = json.loads((walk.runs / "distilled" / "eval_folder_test.json").read_text())
    assert result["transductive"] is True and result["transductive_test_images"] == 2 * PHOTOS
    assert main(["evaluate", "runs/label_free/distilled", "--dataset", "folder", "--root", str(labelled),
                 "--split", "train", "--no-progress", "--num-workers", "0"]) == 0
    assert "transductive" not in capsys.readouterr().out
    assert "transductive" not in json.loads((walk.runs / "distilled" / "eval_folder_train.json").read_text())


def test_an_interrupted_label_free_run_resumes_to_the_same_weights(walk: Walk, tmp_path: Path, monkeypatch) -> None:
    """The random batch sampler keeps its place through last.pt as the P×K one does: interrupted mid-epoch and
    resumed, the run ends with the uninterrupted run's weights."""
    import torch

    from embdistill.config import with_held_out_count
    from embdistill.engine.train.signals import Interrupted
    from embdistill.engine.train import run
    from test_select import _interrupt_at

    def config(name: str):
        overrides = ["data.root=" + str(walk.root / "photos"), f"output_dir={tmp_path}", f"name={name}", *TRAINING,
                     *TINY["distilled.yaml"], *BATCH, "train.batches_per_epoch=2",
                     f"distill.teacher={walk.runs / 'teacher'}", f"distill.bank={walk.runs / 'teacher.bank'}"]
        return with_held_out_count(load_config(RECIPES / "distilled.yaml", overrides))

    reference = run(config("whole"), progress=False)
    cfg = config("resumed")
    count = _interrupt_at(monkeypatch, calls=3)  # step 3: epoch 2, batch 1
    with pytest.raises(Interrupted):
        run(cfg, progress=False)
    count[0] = -100  # disarm
    resumed = run(cfg, progress=False, resume=True)
    assert resumed.metrics == pytest.approx(reference.metrics, abs=1e-6)
    a, b = (load_checkpoint(d / "last.pt")["model_state"] for d in (resumed.run_dir, reference.run_dir))
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the recipe


def test_the_recipe_is_label_free_relaxed_contrastive() -> None:
    cfg = load_config(RECIPES / "distilled.yaml", ["data.root=photos"])
    student = load_config(REPO / "configs" / "recipes" / "student.yaml", ["data.root=photos"])
    teacher = load_config(RECIPES / "teacher.yaml", ["data.root=photos"])
    assert cfg.model == student.model and cfg.data.image_size == student.data.image_size
    assert (teacher.model.backbone, teacher.model.dim, teacher.train.epochs, teacher.data.image_size) == (
        "efficientnet_lite0", None, 0, 224)
    assert is_label_free(cfg.data.dataset) and cfg.data.validation_classes == 0.25
    assert (cfg.train.metric_weight, cfg.train.batch_size) == (0, 64)
    assert (cfg.train.select, cfg.train.select_metric, cfg.eval.split) == ("best", "knn_agreement@10", "auto")
    assert [(t.name, t.weight, t.args) for t in cfg.distill.terms] == [
        ("relaxed_contrastive", 1.0, {"sigma": 1.0, "delta": 1.0})]
    assert cfg.distill.teacher == f"{teacher.output_dir}/{teacher.name}"


@pytest.mark.parametrize(("override", "key"), [
    ("train.metric_weight=1", "train.metric_weight"),
    ("data.validation_classes=0", "data.validation_classes"),
    ("eval.split=test", "eval.split"),
    ("train.select_metric=recall@1", "train.select_metric"),
    ("distill.terms=[]", "distill.terms"),
])
def test_a_label_free_run_refuses_what_needs_labels(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}:"):
        load_config(RECIPES / "distilled.yaml", ["data.root=photos", override])


def test_the_cli_names_the_key_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["distill", "-c", str(RECIPES / "distilled.yaml"), f"data.root={tmp_path}", "train.metric_weight=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "train.metric_weight" in err


# --------------------------------------------------------------------------- the reader and the sampler


def test_photos_lists_every_image_at_any_depth_without_labels(tmp_path: Path, cub100: Path) -> None:
    made = make_photos(tmp_path / "photos", cub100)
    (tmp_path / "photos" / ".thumbs").mkdir()
    (tmp_path / "photos" / ".thumbs" / "x.jpg").symlink_to(made[0])  # hidden: skipped
    (tmp_path / "photos" / "notes.txt").write_text("not an image")  # not an image: ignored
    items = load_dataset("photos", tmp_path / "photos", "train")
    assert sorted(p.name for p in items.paths) == sorted(p.name for p in made)
    assert items.num_classes == len(made) and sorted(items.labels.tolist()) == list(range(len(made)))
    assert "trip/day 2/photo_002.jpg" in items.class_names  # each photo its own "class", named by its path
    assert load_dataset("photos", tmp_path / "photos", "all").paths == items.paths
    # The held-out share (the last labels) is spread over the folders, and the same on every read.
    held = {items.class_names[c] for c in range(len(made) - HELD_OUT, len(made))}
    assert len({str(Path(n).parent) for n in held}) == len(LAYOUT)
    assert load_dataset("photos", tmp_path / "photos", "train").labels.tolist() == items.labels.tolist()
    with pytest.raises(DatasetError, match="no test split"):
        load_dataset("photos", tmp_path / "photos", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no image files"):
        load_dataset("photos", tmp_path / "empty", "train")


def test_random_batches_resume_exactly_and_split_between_processes() -> None:
    sampler = RandomBatchSampler(30, 8, seed=3)
    assert len(sampler) == 4
    sampler.set_epoch(2)
    epoch = list(sampler)
    assert all(len(b) == 8 for b in epoch) and set(i for b in epoch for i in b) == set(range(30))
    resumed = RandomBatchSampler(30, 8, seed=0)
    resumed.load_state_dict({"epoch": 2, "batch_index": 2, "seed": 3})
    resumed.set_epoch(2)  # the same epoch: keeps its place
    assert list(resumed) == epoch[2:]
    assert sampler.state_dict() == {"epoch": 2, "batch_index": 4, "seed": 3}
    sampler.set_epoch(3)
    assert list(sampler) != epoch
    ranks = [RandomBatchSampler(30, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    for a, b in zip(*(list(r) for r in ranks)):
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert len(RandomBatchSampler(30, 8, batches_per_epoch=10)) == 10
    with pytest.raises(ValueError, match="batch_size"):
        RandomBatchSampler(30, 1)
    assert np.unique(np.concatenate(list(RandomBatchSampler(30, 8, batches_per_epoch=10)))).size == 30
