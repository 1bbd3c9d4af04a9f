"""One gallery, two networks: a student trained with the absolute teacher term records its teacher's space,
exports into it (its projection applied), queries the teacher's gallery in `search`, `serve` and `evaluate`,
and every other model is still refused.

Real but tiny runs on 8 + 8 cub100 species (2 steps an epoch): a teacher, and three students of it, absolute
with a projection (32-d student, 256-d teacher), absolute at the teacher's size, and relative only.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from conftest import REPO, cub_subset, tiny_overrides
from embdistill.cli import main
from embdistill.config import load_config
from embdistill.data import load_dataset
from embdistill.data.transforms import Normalization
from embdistill.checkpoints import CheckpointError, checkpoint_fingerprint, embedder_from_checkpoint, load_checkpoint
from embdistill.engine.scoring.command import evaluate_checkpoint
from embdistill.engine.batches.loaders import eval_loader
from embdistill.teacher_space import TEACHER_SPACE, declared_space, in_teacher_space
from embdistill.engine.train import run
from embdistill.deploy.export import DeployError, default_export_path, export_checkpoint, read_onnx_metadata, read_torchscript_metadata
from embdistill.config import ModelConfig
from embdistill.models import create_embedder
from embdistill.deploy.quantize import DEFAULT_SETTINGS
from embdistill.search import load_embeddings, load_encoder
from test_deploy import cli, run_exported
from test_metrics import assert_same, reference

CONFIG = REPO / "configs" / "cub100" / "mobilenet025.yaml"
pytestmark = pytest.mark.slow


KERAS_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"  # ../shared/weights/README.md


@dataclasses.dataclass
class Runs:
    data: Path  # the 8 + 8 species dataset
    teacher: Path  # run directories
    projected: Path  # absolute, 32-d student of the 256-d teacher: a learned projection; train.select=best
    same_size: Path  # absolute, 256-d: its own embedding is trained onto the teacher's
    relative: Path  # relative only, 256-d: another space


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cub100: Path) -> Runs:
    """The teacher: MobileNet-0.25's ImageNet features (256-d, not trained) at 96 px. The students: the same
    ImageNet backbone with a new head, at 64 px, BatchNorm frozen, 2 steps an epoch: distinct embeddings."""
    if not KERAS_WEIGHTS.is_file():
        pytest.skip(f"MobileNet-0.25's ImageNet weights are not at {KERAS_WEIGHTS}")
    out = tmp_path_factory.mktemp("teacher_space")
    data = cub_subset(out, cub100, per_split=8, per_class=8)

    def train(name: str, *extra: str, **values: object) -> Path:
        small = {"data.root": data, "data.validation_classes": 2, "train.classes_per_batch": 3,
                 "train.images_per_class": 4, "model.pretrained": KERAS_WEIGHTS, "model.freeze_batchnorm": True,
                 **values}
        return run(load_config(CONFIG, tiny_overrides(out, cub100, name, **small) + list(extra)), progress=False).run_dir

    teacher = train("teacher", **{"model.dim": "null", "data.image_size": 96, "train.epochs": 0})
    student = [f"distill.teacher={teacher / 'last.pt'}"]
    return Runs(
        data, teacher,
        train("projected", *student, "distill.terms=[{name: absolute}]",
              **{"model.dim": 32, "train.select": "best", "eval.every_epochs": 1, "train.epochs": 2}),
        train("same_size", *student, "distill.terms=[{name: absolute}]", **{"model.dim": 256}),
        train("relative", *student, "distill.terms=[{name: relative}]", **{"model.dim": 256}),
    )


def images(runs: Runs, payload: dict, n: int = 6) -> torch.Tensor:
    """``n`` test images as the checkpoint's evaluation preprocesses them."""
    items = load_dataset("cub200", runs.data, "test")
    items = items.subset(np.linspace(0, len(items) - 1, n).round().astype(int))
    mean, std = payload["normalization"]
    loader = eval_loader(items, payload["image_size"], Normalization(tuple(mean), tuple(std)), batch_size=n, num_workers=0)
    return next(iter(loader))[0]


def projected_reference(payload: dict, x: torch.Tensor) -> np.ndarray:
    """What the absolute term compared with the teacher: L2(P · student embedding)."""
    student = embedder_from_checkpoint(payload).eval()
    with torch.no_grad():
        return F.normalize(student(x).embedding @ payload[TEACHER_SPACE]["projection"].T, dim=1).numpy()


# --------------------------------------------------------------------------- what the checkpoint records


def test_a_student_of_the_absolute_term_records_its_teachers_space(runs: Runs) -> None:
    teacher_fp = checkpoint_fingerprint(runs.teacher)
    last = load_checkpoint(runs.projected / "last.pt")
    record = last[TEACHER_SPACE]
    assert record["fingerprint"] == teacher_fp and record["term"] == "absolute"
    assert record["teacher"] == str(runs.teacher / "last.pt")
    assert record["projection"].shape == (256, 32)  # teacher_dim x student_dim, the step's own projection
    assert torch.equal(record["projection"], last["objective"]["terms.absolute.projection.weight"])
    best = load_checkpoint(runs.projected)  # best.pt keeps it too, with the projection of its own epoch
    assert runs.projected.joinpath("best.pt").is_file() and best[TEACHER_SPACE]["fingerprint"] == teacher_fp
    assert declared_space(last) == ""  # its own 32-d output is not in the teacher's space; the projection is

    same = load_checkpoint(runs.same_size)
    assert same[TEACHER_SPACE]["fingerprint"] == teacher_fp and same[TEACHER_SPACE]["projection"] is None
    assert declared_space(same) == teacher_fp
    assert TEACHER_SPACE not in load_checkpoint(runs.relative) and declared_space(load_checkpoint(runs.relative)) == ""
    assert TEACHER_SPACE not in load_checkpoint(runs.teacher)


@pytest.mark.parametrize("dim", [24, None])
def test_folding_the_projection_into_the_head_gives_the_same_embeddings(dim: int | None) -> None:
    """L2(P · L2(W f + b)) from a plain embedder of the teacher's size; also for a student without a head."""
    torch.manual_seed(0)
    config = ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.25}, dim=dim)
    student = create_embedder(config).eval()
    projection = torch.randn(40, student.dim)
    payload = {"model_config": dataclasses.asdict(config), "model_state": student.state_dict(), "image_size": 32,
               "normalization": (student.normalization.mean, student.normalization.std),
               TEACHER_SPACE: {"fingerprint": "f" * 64, "teacher": "t.pt", "term": "absolute", "projection": projection}}
    folded = in_teacher_space(payload, "test")
    assert folded["model_config"]["dim"] == 40 and declared_space(folded) == "f" * 64
    assert checkpoint_fingerprint(folded) != checkpoint_fingerprint(payload)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        got = embedder_from_checkpoint(folded).eval()(x).embedding
        expected = F.normalize(student(x).embedding @ projection.T, dim=1)
    assert torch.allclose(got, expected, atol=1e-5) and torch.allclose(got.norm(dim=1), torch.ones(5), atol=1e-5)
    with pytest.raises(CheckpointError, match="records no teacher space"):
        in_teacher_space({k: v for k, v in payload.items() if k != TEACHER_SPACE}, "checkpoint x.pt")


def test_the_projection_trains_at_its_own_learning_rate() -> None:
    """train.objective_lr_mult: the absolute term's projection (random at the start, no ImageNet weights to keep) is
    its own optimizer group at lr × the multiplier; backbone and head keep theirs."""
    from embdistill.engine.train.optim import build_optimizer
    from embdistill.losses.distill import AbsoluteTeacherLoss

    cfg = load_config(CONFIG, ["train.lr=0.001", "train.backbone_lr_mult=0.1", "train.objective_lr_mult=100"])
    student = create_embedder(ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.25}, dim=24))
    objective = torch.nn.ModuleDict({"absolute": AbsoluteTeacherLoss(student_dim=24, teacher_dim=40)})
    groups = {g["name"]: g for g in build_optimizer(cfg, student, objective).param_groups}
    assert {name: g["lr"] for name, g in groups.items()} == pytest.approx({"backbone": 1e-4, "head": 1e-3, "objective": 0.1})
    assert groups["objective"]["params"] == [objective["absolute"].projection.weight]
    plain = build_optimizer(cfg, student, torch.nn.ModuleDict({"absolute": AbsoluteTeacherLoss(24, 24)}))
    assert [g["name"] for g in plain.param_groups] == ["backbone", "head"]  # nothing of its own: no third group


# --------------------------------------------------------------------------- export


def test_export_with_the_projection_outputs_the_teachers_space(runs: Runs, tmp_path: Path) -> None:
    teacher_fp, payload = checkpoint_fingerprint(runs.teacher), load_checkpoint(runs.projected)
    x = images(runs, payload)
    expected = projected_reference(payload, x)
    for fmt, read in (("onnx", read_onnx_metadata), ("torchscript", read_torchscript_metadata)):
        result = export_checkpoint(runs.projected, fmt, tmp_path / f"s.{fmt}", space="teacher")
        meta = read(result.path)
        assert meta.embedding_dim == 256 and meta.declared_space == teacher_fp
        assert meta.model_fingerprint not in (teacher_fp, checkpoint_fingerprint(payload), "")
        assert "teacher's embedding space" in meta.output_layout
        got = run_exported(result.path, fmt, x)
        assert got.shape == (6, 256) and np.abs(got - expected).max() <= 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    own = read_onnx_metadata(export_checkpoint(runs.projected, "onnx", tmp_path / "own.onnx").path)
    assert own.embedding_dim == 32 and own.declared_space == "" and own.model_fingerprint == checkpoint_fingerprint(payload)
    # at the teacher's size no projection exists: every export of the student declares the space
    assert read_onnx_metadata(export_checkpoint(runs.same_size, "onnx", tmp_path / "same.onnx").path).declared_space == teacher_fp
    with pytest.raises(DeployError, match=r"checkpoint .*relative.* records no teacher space: only a student distilled"):
        export_checkpoint(runs.relative, "onnx", tmp_path / "r.onnx", space="teacher")


def test_export_command_writes_the_teacher_space_beside_the_own_export(runs: Runs, capsys: pytest.CaptureFixture) -> None:
    teacher_fp = checkpoint_fingerprint(runs.teacher)
    capsys.readouterr()
    assert cli("export", runs.projected, "--space", "teacher") == 0
    report = json.loads(capsys.readouterr().out)
    path = runs.projected / "best.teacher_space.onnx"
    assert report["path"] == str(path) == str(default_export_path(runs.projected, "onnx", "teacher"))
    assert report["embedding_dim"] == 256 and report["declared_space"] == teacher_fp and report["max_abs_diff_vs_pytorch"] <= 1e-4
    assert not (runs.projected / "best.onnx").exists()  # the student's own export is another file
    assert cli("export", runs.relative, "--space", "teacher") == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("embdistill export: error: checkpoint ") and "absolute" in lines[0]


def test_int8_export_keeps_the_teachers_space(runs: Runs, tmp_path: Path) -> None:
    """`--quantize int8 --space teacher`: the same network as the fp32 teacher-space export, calibrated on training photos."""
    settings = DEFAULT_SETTINGS.with_(images=16, batch_size=8)
    result = export_checkpoint(runs.projected, "onnx", quantize="int8", quant_settings=settings, space="teacher")
    assert result.path == runs.projected / "best.teacher_space.int8.onnx"
    meta = read_onnx_metadata(result.path)
    fp32 = read_onnx_metadata(export_checkpoint(runs.projected, "onnx", tmp_path / "fp32.onnx", space="teacher").path)
    assert meta.embedding_dim == 256 and meta.declared_space == checkpoint_fingerprint(runs.teacher)
    assert meta.model_fingerprint == fp32.model_fingerprint
    # against the projected fp32 student on real images; 64 px MobileNet-0.25 loses more than the 96-px table's 0.99
    assert result.min_cosine is not None and result.min_cosine > 0.8


# --------------------------------------------------------------------------- search and serve


def photos(runs: Runs) -> Path:
    """The 8 test species' 64 photos, linked into one folder per species (what `embed` takes)."""
    folder = runs.data.parent / "photos"
    if not folder.is_dir():
        for path in load_dataset("cub200", runs.data, "test").paths:
            (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
            (folder / path.parent.name / path.name).symlink_to(path)
    return folder


@pytest.fixture(scope="module")
def teacher_gallery(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 8 test species' 64 photos embedded by the teacher, as `embed` then `index` write it."""
    out = tmp_path_factory.mktemp("teacher_gallery")
    assert cli("embed", runs.teacher, photos(runs), "-o", out / "teacher.npy", "--num-workers", "0", "--no-progress") == 0
    assert cli("index", out / "teacher.npy", "-o", out / "teacher.faiss") == 0
    return out / "teacher.faiss"


def search(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()
    code = cli("search", *argv)
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def query_photo(gallery: Path) -> str:
    return gallery.with_name("teacher.files.txt").read_text().splitlines()[5]


def test_search_lets_a_student_query_its_teachers_gallery_saying_so_in_one_line(
    runs: Runs, teacher_gallery: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    teacher_fp, query = checkpoint_fingerprint(runs.teacher), query_photo(teacher_gallery)
    onnx = export_checkpoint(runs.projected, "onnx", tmp_path / "student.onnx", space="teacher").path
    hits = {}
    for model in (runs.projected, onnx, runs.same_size):  # the checkpoint applies its projection by itself
        code, out, err = search(capsys, teacher_gallery, query, "--model", model, "-k", "4")
        assert code == 0 and err == []
        notes = [line for line in out if line.startswith("student ")]
        assert notes == [f"student {Path(model).resolve()} queries gallery {teacher_gallery} of its teacher "
                         f"{runs.teacher.resolve()}: trained into the teacher's space {teacher_fp[:12]} "
                         "by the absolute teacher term"]
        hits[model] = [line.split() for line in out if line.strip()[:1].isdigit()]
        assert len(hits[model]) == 4
    # the student's neighbours are the brute-force nearest teacher embeddings of its projected embedding
    gallery = load_embeddings(teacher_gallery.with_suffix(".npy"))
    files = teacher_gallery.with_name("teacher.files.txt").read_text().splitlines()
    encoder = load_encoder(runs.projected, target_space=teacher_fp)
    vector = encoder.embed_images([Image.open(query).convert("RGB")])[0]
    assert [row[2] for row in hits[runs.projected]] == [files[i] for i in np.argsort(-(gallery @ vector))[:4]]
    assert [row[2] for row in hits[onnx]] == [row[2] for row in hits[runs.projected]]  # same network, exported

    # the teacher's own query is no pairing: no line
    code, out, err = search(capsys, teacher_gallery, query, "-k", "2")
    assert code == 0 and err == [] and not any(line.startswith("student ") for line in out)


def test_search_still_refuses_every_other_space(
    runs: Runs, teacher_gallery: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    query = query_photo(teacher_gallery)
    code, out, err = search(capsys, teacher_gallery, query, "--model", runs.relative)  # 256-d, relation-only
    assert code == 2 and out == [] and len(err) == 1
    assert err[0].startswith(f"embdistill search: error: model {runs.relative.resolve()} embeds into space")
    assert "--allow-other-space" in err[0]
    code, out, err = search(capsys, teacher_gallery, query, "--model", runs.relative, "--allow-other-space", "-k", "2")
    assert code == 0 and err == [] and not any(line.startswith("student ") for line in out)
    # the student's own 32-d export is not in the teacher's space: the error says how to export it
    own = export_checkpoint(runs.projected, "onnx", tmp_path / "own.onnx").path
    code, out, err = search(capsys, teacher_gallery, query, "--model", own)
    assert code == 2 and len(err) == 1 and "gives 32-d embeddings" in err[0] and "--space teacher" in err[0]
    # asymmetric: the teacher may not query a gallery the student embedded
    student_npy = tmp_path / "student.npy"
    assert cli("embed", runs.same_size, photos(runs), "-o", student_npy, "--num-workers", "0", "--no-progress") == 0
    code, out, err = search(capsys, student_npy, query, "--model", runs.teacher)
    assert code == 2 and len(err) == 1 and "embeds into space" in err[0]


def test_serve_shows_the_students_query_beside_the_teachers(
    runs: Runs, teacher_gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`embdistill serve TEACHER_GALLERY --query-model STUDENT`: the page's two columns search one gallery."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import tempfile

    import uvicorn

    from embdistill.serve import app as app_module

    made = {}
    create_app = app_module.create_app

    def keep_sides(sides: list, **kw: object) -> object:
        made["sides"] = sides
        return create_app(sides, **kw)

    monkeypatch.setattr(app_module, "create_app", keep_sides)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)  # no server: the sides are what is checked
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # run_server points it at its own folder, then removes it
    capsys.readouterr()
    assert cli("serve", teacher_gallery, "--query-model", runs.projected, "--port", "8765", "-k", "4") == 0
    out = capsys.readouterr().out.splitlines()
    teacher_side, student_side = made["sides"]
    assert student_side.gallery is teacher_side.gallery and student_side.name == "projected on teacher's gallery"
    assert student_side.encoder.dim == 256 and teacher_side.pairing is None
    assert student_side.describe()["pairing"] == student_side.pairing and student_side.pairing in out
    query = query_photo(teacher_gallery)
    results = app_module._search_all(made["sides"], Image.open(query).convert("RGB"), 4)
    code, cli_out, _ = search(capsys, teacher_gallery, query, "--model", runs.projected, "-k", "4")
    assert [h["path"] for h in results[1]["hits"]] == [line.split()[2] for line in cli_out if line.strip()[:1].isdigit()]
    assert results[1]["pairing"] == student_side.pairing and "pairing" not in results[0]

    assert cli("serve", teacher_gallery, "--query-model", runs.relative, "--port", "8765") == 2  # still refused
    assert "embeds into space" in capsys.readouterr().err
    assert cli("serve", teacher_gallery, "--compare", teacher_gallery, "--query-model", runs.projected) == 2
    assert "give one of them" in capsys.readouterr().err


# --------------------------------------------------------------------------- evaluate


def test_evaluate_scores_the_students_queries_against_the_teachers_gallery(runs: Runs, capsys: pytest.CaptureFixture) -> None:
    teacher_fp = checkpoint_fingerprint(runs.teacher)
    metrics = evaluate_checkpoint(runs.projected, split="test", gallery_model=runs.teacher, progress=False, num_workers=0)
    assert metrics["images"] == 64 and metrics["classes"] == 8 and metrics["gallery_model"] == str(runs.teacher)
    assert metrics["pairing"].startswith(f"student {runs.projected} queries the gallery of its teacher {runs.teacher}")
    # brute force: every test image embedded by both networks, query i against the teacher's other 63
    items = load_dataset("cub200", runs.data, "test")
    student_payload = in_teacher_space(load_checkpoint(runs.projected), "student")
    embedded = []
    for payload in (student_payload, load_checkpoint(runs.teacher)):
        model = embedder_from_checkpoint(payload).eval()
        mean, std = payload["normalization"]
        loader = eval_loader(items, payload["image_size"], Normalization(tuple(mean), tuple(std)), 64, num_workers=0)
        with torch.no_grad():
            embedded.append(torch.cat([model(x).embedding for x, _, _ in loader]).numpy())
    queries, gallery = embedded
    ref = reference(gallery, items.labels, queries, items.labels, ks=(1, 2, 4, 8), paired=True)
    assert_same({k: metrics[k] for k in ref}, ref)
    assert json.loads((runs.projected / "eval_cub200_test_gallery_teacher.json").read_text())["recall@1"] == metrics["recall@1"]

    capsys.readouterr()
    assert main(["evaluate", str(runs.same_size), "--gallery-model", str(runs.teacher), "--no-progress",
                 "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"student {runs.same_size} queries the gallery of its teacher")
    assert set(json.loads(out.split("\n", 1)[1])) >= {"recall@1", "map@r", "query_model", "gallery_model"}
    assert teacher_fp[:12] in out.splitlines()[0]


def test_evaluate_refuses_a_student_of_another_space_unless_asked(runs: Runs, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["evaluate", str(runs.relative), "--gallery-model", str(runs.teacher), "--no-progress", "--num-workers", "0"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embdistill evaluate: error: checkpoint {runs.relative} embeds into space")
    assert "--allow-other-space" in lines[0]
    metrics = evaluate_checkpoint(runs.relative, split="test", gallery_model=runs.teacher, allow_other_space=True,
                                  progress=False, num_workers=0)
    assert 0.0 <= metrics["recall@1"] <= 1.0 and "--allow-other-space" in metrics["pairing"]


def _embedded(payload: dict, items) -> np.ndarray:
    model = embedder_from_checkpoint(payload).eval()
    mean, std = payload["normalization"]
    loader = eval_loader(items, payload["image_size"], Normalization(tuple(mean), tuple(std)), 64, num_workers=0)
    with torch.no_grad():
        return torch.cat([model(x).embedding for x, _, _ in loader]).numpy()


def test_evaluate_with_a_gallery_folder_scores_the_other_images_against_it(runs: Runs, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """--gallery-images: the split's images linked in a folder are the gallery, the others its queries (never in
    it), for one network and for a student's queries on its teacher's gallery; checked against brute force."""
    items = load_dataset("cub200", runs.data, "test")
    labels = np.asarray(items.labels)
    in_gallery = np.zeros(len(items), dtype=bool)
    for label in set(labels.tolist()):
        in_gallery[np.flatnonzero(labels == label)[:3]] = True  # 3 of each species' 8 photos
    folder = tmp_path / "gallery"
    folder.mkdir()
    for i in np.flatnonzero(in_gallery):
        (folder / f"g{i:03d}.jpg").symlink_to(Path(items.paths[i]).resolve())
    student = _embedded(load_checkpoint(runs.projected / "best.pt"), items)
    in_space = _embedded(in_teacher_space(load_checkpoint(runs.projected / "best.pt"), "student"), items)
    teacher = _embedded(load_checkpoint(runs.teacher / "last.pt"), items)
    q, g = ~in_gallery, in_gallery

    capsys.readouterr()
    own = evaluate_checkpoint(runs.projected, split="test", gallery_images=folder, progress=False, num_workers=0)
    ref = reference(student[g], labels[g], student[q], labels[q], ks=(1, 2, 4, 8))
    assert_same({k: own[k] for k in ref}, ref)
    assert (own["queries"], own["gallery"], own["distilled_on_gallery"]) == (40, 24, 0) and "transductive" not in own
    assert capsys.readouterr().out.startswith(f"known gallery: the 24 test images in {folder} are the gallery, the "
                                              f"other 40 query it; {runs.projected} distilled without labels on 0")
    assert (runs.projected / "eval_cub200_test_gallery_images_gallery.json").is_file()

    asym = evaluate_checkpoint(runs.projected, split="test", gallery_model=runs.teacher, gallery_images=folder,
                               progress=False, num_workers=0)
    ref = reference(teacher[g], labels[g], in_space[q], labels[q], ks=(1, 2, 4, 8))
    assert_same({k: asym[k] for k in ref}, ref)
    assert asym["pairing"].startswith(f"student {runs.projected} queries the gallery of its teacher")

    capsys.readouterr()
    assert main(["evaluate", str(runs.teacher), "--gallery-images", str(folder), "--no-progress", "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n", 1)[1])["recall@1"] == pytest.approx(reference(
        teacher[g], labels[g], teacher[q], labels[q], ks=(1,))["recall@1"], abs=1e-12)


def test_a_gallery_folder_must_hold_some_of_the_split_and_every_querys_class(runs: Runs, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    items = load_dataset("cub200", runs.data, "test")
    every, one_short = tmp_path / "every", tmp_path / "one_short"
    for folder in (every, one_short):
        folder.mkdir()
    first = items.labels[0]
    for i, path in enumerate(items.paths):
        (every / f"{i:03d}.jpg").symlink_to(Path(path).resolve())
        if i % 2 and items.labels[i] != first:  # no photo of the first species in the gallery
            (one_short / f"{i:03d}.jpg").symlink_to(Path(path).resolve())
    for folder, expected in ((every, f"--gallery-images {every} holds 64 of the 64 test images"),
                             (one_short, f"--gallery-images {one_short} holds no test image of 1 classes that queries "
                                         f"belong to (for example ['{items.class_names[first]}'])"),
                             (tmp_path / "none", f"--gallery-images {tmp_path / 'none'}: no such folder")):
        capsys.readouterr()
        assert main(["evaluate", str(runs.teacher), "--gallery-images", str(folder), "--no-progress",
                     "--num-workers", "0"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"embdistill evaluate: error: {expected}"), err


# --------------------------------------------------------------------------- choosing the epoch for the teacher's gallery


def test_a_run_chooses_its_epoch_by_its_queries_on_the_teachers_gallery(runs: Runs, cub100: Path, tmp_path: Path) -> None:
    """train.select_metric asymmetric_recall@1: each held-out score is the student's queries (through the projection
    of that step) on the teacher's gallery of the same images, as `evaluate --split validation --gallery-model`
    scores the chosen best.pt afterwards."""
    small = {"data.root": runs.data, "data.validation_classes": 2, "train.classes_per_batch": 3, "train.images_per_class": 4,
             "model.pretrained": KERAS_WEIGHTS, "model.freeze_batchnorm": True, "model.dim": 32, "train.epochs": 3,
             "train.select": "best", "train.select_metric": "asymmetric_recall@1", "eval.every_epochs": 1,
             "distill.teacher_image_size": 96}  # the teacher's own size: its gallery as `evaluate` embeds it
    cfg = load_config(CONFIG, tiny_overrides(tmp_path, cub100, "by_asymmetric", **small)
                      + [f"distill.teacher={runs.teacher / 'last.pt'}", "distill.terms=[{name: absolute}]"])
    run(cfg, progress=False)
    summary = yaml.safe_load((cfg.run_dir / "summary.yaml").read_text())
    curve = summary["validation_curve"]
    assert [e["epoch"] for e in curve] == [1, 2, 3] and all(0 <= e["asymmetric_recall@1"] <= 1 for e in curve)
    chosen = max(curve, key=lambda e: e["asymmetric_recall@1"])  # the first of equal scores
    assert summary["selected"]["metric"] == "asymmetric_recall@1" and summary["epoch"] == chosen["epoch"]
    assert summary["selected"]["validation"] == chosen["asymmetric_recall@1"]
    # scored again at the end (the run's split is the held-out one) with the chosen epoch's weights and projection
    assert summary["split"] == "validation" and summary["asymmetric_recall@1"] == chosen["asymmetric_recall@1"]
    scored = evaluate_checkpoint(cfg.run_dir / "best.pt", split="validation", gallery_model=runs.teacher / "last.pt",
                                 progress=False, num_workers=0)
    queries = 2 * 8  # the held-out species' images
    assert abs(scored["recall@1"] - chosen["asymmetric_recall@1"]) <= 1 / queries + 1e-9  # equal, but for a float near-tie


def test_evaluate_scores_a_student_trained_on_the_teacher_terms_alone(runs: Runs, cub100: Path, tmp_path: Path) -> None:
    """train.metric_weight 0 on labelled data: `evaluate` drops the distill section, and must not then read the run
    as one with nothing to train (it did: a ConfigError on every such checkpoint)."""
    small = {"data.root": runs.data, "data.validation_classes": 2, "train.classes_per_batch": 3, "train.images_per_class": 4,
             "model.pretrained": KERAS_WEIGHTS, "model.freeze_batchnorm": True, "model.dim": 32, "train.metric_weight": 0}
    cfg = load_config(CONFIG, tiny_overrides(tmp_path, cub100, "terms_only", **small)
                      + [f"distill.teacher={runs.teacher / 'last.pt'}", "distill.terms=[{name: asymmetric_contrastive}]"])
    run(cfg, progress=False)
    own = evaluate_checkpoint(cfg.run_dir / "last.pt", split="test", progress=False, num_workers=0)
    asym = evaluate_checkpoint(cfg.run_dir / "last.pt", split="test", gallery_model=runs.teacher / "last.pt",
                               progress=False, num_workers=0)
    assert 0 <= own["recall@1"] <= 1 and 0 <= asym["recall@1"] <= 1
    assert asym["pairing"].startswith(f"student {cfg.run_dir / 'last.pt'} queries the gallery of its teacher")


def test_choosing_by_the_teachers_gallery_needs_the_absolute_term(runs: Runs, cub100: Path, tmp_path: Path) -> None:
    from embdistill.config import ConfigError

    values = {"data.root": runs.data, "data.validation_classes": 2, "train.select": "best",
              "train.select_metric": "asymmetric_recall@1", "eval.every_epochs": 1}
    with pytest.raises(ConfigError, match=r"train.select_metric: 'asymmetric_recall@1'.*absolute"):
        load_config(CONFIG, tiny_overrides(tmp_path, cub100, "relation_only", **values)
                    + [f"distill.teacher={runs.teacher / 'last.pt'}", "distill.terms=[{name: relative}]"])
