"""The recipes for your own photos (configs/recipes/) and the README's "Distil a model for your own photos".

The walk-through runs here as the README writes it: its numbered commands are read from the
README and run one by one through `embdistill`'s own entry function, in a working directory
holding `photos/` (10 real cub100 species x 6 photos, linked) and a link to `configs/`. Each
training command gets overrides that make it tiny (32-px students, a 48-px teacher, 2 epochs
of one 2 x 4 batch, 1 bank view), nothing else changes; `embdistill serve` runs in its own
process, as a person starts it.
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from embdistill.cli import main
from embdistill.config import load_config
from embdistill.checkpoints import load_checkpoint
from embdistill.search import load_embeddings

RECIPES = REPO / "configs" / "recipes"
SECTION = "## Distil a model for your own photos"
SPECIES, PHOTOS = 10, 6  # 5 train species (2 held out by the recipes' quarter, 3 to train on), 5 unseen
# What makes each run tiny; the README's commands are run otherwise as written.
TRAINING = ["data.num_workers=0", "data.cache_images=false", "device=cpu", "train.log_every=1",
            "train.classes_per_batch=2", "train.images_per_class=4", "train.batches_per_epoch=1"]
TINY = {
    "teacher.yaml": ["data.image_size=48"],
    "student.yaml": ["data.image_size=32", "train.epochs=2"],
    "distilled.yaml": ["data.image_size=32", "train.epochs=2", "distill.teacher_image_size=48", "distill.cache_views=1"],
}
OTHER = {"export": ["--calibration-images", "16"], "embed": ["--num-workers", "0", "--no-progress"]}


def readme_commands() -> list[str]:
    """The `embdistill ...` commands of the README's walk-through, in order (numbered lines only)."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"the README has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    steps = [line for line in section.splitlines() if re.match(r"\d+\. ", line)]
    return [c for line in steps for c in re.findall(r"`(embdistill [^`]+)`", line)]


def tiny(argv: list[str]) -> list[str]:
    """The README's arguments plus what makes the run tiny."""
    command = argv[0]
    if command in ("train", "distill", "bank"):
        recipe = Path(argv[argv.index("-c") + 1]).name
        return [command, "--no-progress", *argv[1:], *TRAINING, *TINY[recipe]]
    return [*argv, *OTHER.get(command, [])]


@dataclass
class Walk:
    root: Path  # the working directory the commands ran in
    runs: Path  # root / "runs/recipes"
    photos: Path
    commands: list[list[str]]  # as run (serve excluded)
    serve: list[str]  # the README's serve command
    search_output: str  # `embdistill search` on a gallery photo
    query: Path  # that photo (relative to root)


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory, cub100: Path) -> Walk:
    root = tmp_path_factory.mktemp("own_photos")
    photos = root / "photos"
    for species in sorted((cub100 / "images").iterdir())[:SPECIES]:  # linked, never copied
        (photos / species.name).mkdir(parents=True)
        for image in sorted(species.iterdir())[:PHOTOS]:
            (photos / species.name / image.name).symlink_to(image)
    (root / "configs").symlink_to(REPO / "configs")
    commands = [shlex.split(c)[1:] for c in readme_commands()]
    assert [c[0] for c in commands] == ["train", "bank", "train", "distill", "export", "embed", "index", "serve"]
    unseen = sorted(photos.iterdir())[-1]  # a test species: in the gallery, never trained on
    query = Path("photos") / unseen.name / sorted(p.name for p in unseen.iterdir())[0]
    ran, search_output = [], ""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for argv in commands[:-1]:
            ran.append(tiny(argv))
            assert main(ran[-1]) == 0, ran[-1]
        # Not in the README's list, the command line's own search: a gallery photo as the query.
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["search", "runs/recipes/photos.faiss", str(query), "-k", "3"]) == 0
        search_output = out.getvalue()
    return Walk(root, root / "runs" / "recipes", photos, ran, commands[-1], search_output, query)


# --------------------------------------------------------------------------- the recipes


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_recipe_loads_with_a_data_root(recipe: str) -> None:
    cfg = load_config(RECIPES / recipe, ["data.root=../shared/data/cars196"])
    assert cfg.data.dataset == "folder" and cfg.data.root == "../shared/data/cars196"
    # Held-out validation and best-epoch selection are on by default, for a dataset of any size.
    assert cfg.data.validation_classes == 0.25
    assert (cfg.train.select, cfg.eval.split) == ("best", "test") and cfg.eval.every_epochs >= 1


def test_the_recipes_are_the_best_found_so_far() -> None:
    teacher, student, distilled = (load_config(RECIPES / f"{n}.yaml", ["data.root=photos"]) for n in ("teacher", "student", "distilled"))
    assert (teacher.model.backbone, teacher.model.dim, teacher.train.epochs, teacher.data.image_size) == ("efficientnet_lite0", None, 0, 224)
    assert (student.model.backbone, student.model.freeze_batchnorm, student.data.image_size, student.train.lr) == ("mobilenet_v2", True, 96, 1e-4)
    assert distilled.model == student.model  # one student network, defined in student.yaml
    assert (distilled.train.epochs, distilled.train.backbone_lr_mult) == (30, 1.0)
    assert (distilled.train.classes_per_batch, distilled.train.images_per_class) == (16, 4)
    d = distilled.distill
    assert [(t.name, t.weight, t.args) for t in d.terms] == [("relative", 10.0, {"reduction": "mean", "scale": "mean"})]
    assert (d.teacher, d.teacher_image_size, d.cache_views) == (f"{teacher.output_dir}/{teacher.name}", 224, 4)
    assert d.bank


# --------------------------------------------------------------------------- the README's walk-through


def test_every_run_chose_its_epoch_on_held_out_classes(walk: Walk) -> None:
    for name in ("teacher", "student", "distilled"):
        run = walk.runs / name
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["data"]["validation_classes"] == 2  # a quarter of 5 train species: at least 2, saved as the count
        assert saved["data"]["root"] == "photos"
        summary = yaml.safe_load((run / "summary.yaml").read_text())
        assert summary["split"] == "test" and 0 <= summary["recall@1"] <= 1
    assert (walk.runs / "teacher" / "last.pt").is_file()  # not trained: nothing to choose
    for name in ("student", "distilled"):
        run = walk.runs / name
        summary = yaml.safe_load((run / "summary.yaml").read_text())
        assert summary["selected"]["epochs_trained"] == 2 and summary["selected"]["metric"] == "recall@1"
        assert [c["epoch"] for c in summary["validation_curve"]] == [1, 2]
        assert load_checkpoint(run / "best.pt")["selected"]["epoch"] == summary["epoch"] in (1, 2)
    distilled = yaml.safe_load((walk.runs / "distilled" / "summary.yaml").read_text())
    assert (walk.runs / "teacher.bank").is_file()
    assert distilled["teacher_bank"] == "runs/recipes/teacher.bank"
    assert distilled["teacher_forward_images"] == 0  # the bank, filled by `embdistill bank`, stood in for the teacher


def test_the_int8_student_embeds_like_its_checkpoint(walk: Walk) -> None:
    int8 = walk.runs / "distilled" / "best.int8.onnx"
    assert int8.is_file() and Path(f"{int8}.json").is_file()
    gallery = walk.runs / "photos.npy"
    fp32 = walk.root / "fp32.npy"
    assert main(["embed", str(walk.runs / "distilled" / "best.pt"), str(walk.photos), "-o", str(fp32), *OTHER["embed"]]) == 0
    quantized, reference = load_embeddings(gallery), load_embeddings(fp32)
    assert quantized.shape == reference.shape == (SPECIES * PHOTOS, 512)
    files = [Path(p).name for p in (walk.runs / "photos.files.txt").read_text().splitlines()]
    assert files == [Path(p).name for p in (walk.root / "fp32.files.txt").read_text().splitlines()]
    cosine = (quantized * reference).sum(axis=1)
    assert cosine.mean() > 0.98 and cosine.min() > 0.95, (cosine.mean(), cosine.min())


def test_search_finds_a_gallery_photo_first(walk: Walk) -> None:
    rows = [line.split() for line in walk.search_output.splitlines() if re.match(r"\s*\d+\s+[-\d.]+\s+\S", line)]
    assert len(rows) == 3, walk.search_output
    rank, score, path = rows[0]
    assert Path(path).name == walk.query.name and Path(path).parent.name == walk.query.parent.name  # itself, its species
    assert float(score) == pytest.approx(1.0, abs=1e-3)


def test_the_search_page_answers(walk: Walk) -> None:
    pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
    from test_serve import free_port, post_image, wait_until_serving

    port = free_port()
    log = (walk.root / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "embdistill", *walk.serve, "--port", str(port), "--threads", "1"],
                               cwd=walk.root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process, walk.root / "serve.log")
        status, body = post_image(url, (walk.root / walk.query).read_bytes(), walk.query.name, k=3)
        assert status == 200, body
        (side,) = body["results"]
        assert side["name"] == "distilled" and side["format"] == "onnx" and side["images"] == SPECIES * PHOTOS
        first = side["hits"][0]
        assert (first["file"], first["class"]) == (walk.query.name, walk.query.parent.name)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
