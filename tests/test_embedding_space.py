"""One embedding space per gallery: `search` refuses a model of another network, accepts the gallery's own
checkpoint and its ONNX / INT8 exports, and takes the other one only when asked (--allow-other-space)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from embdistill.data import ImageList
from embdistill.checkpoints import checkpoint_fingerprint
from embdistill.deploy.export import export_checkpoint, read_onnx_metadata
from embdistill.config import ModelConfig
from embdistill.deploy.quantize import DEFAULT_SETTINGS
from test_deploy import CUB100, STUDENT, STUDENT_SIZE, cli, write_checkpoint
from test_deploy import gallery, parity_images, student, student_onnx  # noqa: F401  (its fixtures, used here)

pytestmark = pytest.mark.skipif(not CUB100.is_dir(), reason=f"real data {CUB100} is absent")

# Another network with the student's embedding size: the user's "teacher" of the issue, 64-d as the student.
OTHER = ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.5}, dim=STUDENT.dim)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory, parity_images: ImageList) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("other_run") / "last.pt", OTHER, STUDENT_SIZE, calibrate=parity_images)


@pytest.fixture(scope="module")
def indexed(student: Path, gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gallery embedded by the student checkpoint, as `embed` then `index` write it."""
    out = tmp_path_factory.mktemp("indexed")
    assert cli("embed", student, gallery, "-o", out / "student.npy", "--num-workers", "0", "--no-progress") == 0
    assert cli("index", out / "student.npy", "-o", out / "student.faiss") == 0
    return out / "student.faiss"


def query_of(index: Path) -> str:
    return (index.with_name("student.files.txt")).read_text().splitlines()[3]


def result_rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]


def search_warnings(capsys: pytest.CaptureFixture, index: Path, query: str, model: Path) -> list[str]:
    """`embdistill search INDEX QUERY --model MODEL -k 2`, which must succeed with its 2 results; its stderr lines."""
    capsys.readouterr()
    assert cli("search", index, query, "--model", model, "-k", "2") == 0
    captured = capsys.readouterr()
    assert len(result_rows(captured.out)) == 2
    return captured.err.splitlines()


def test_the_fingerprint_travels_from_checkpoint_to_export_embeddings_and_index(
    student: Path, student_onnx: Path, indexed: Path, other: Path
) -> None:
    fingerprint = checkpoint_fingerprint(student)
    assert len(fingerprint) == 64 and fingerprint != checkpoint_fingerprint(other)
    assert read_onnx_metadata(student_onnx).model_fingerprint == fingerprint
    assert json.loads(Path(f"{student_onnx}.json").read_text())["model_fingerprint"] == fingerprint
    assert json.loads(indexed.with_suffix(".npy.json").read_text())["model_fingerprint"] == fingerprint
    assert json.loads(Path(f"{indexed}.json").read_text())["model_fingerprint"] == fingerprint


def test_search_refuses_a_model_of_another_space_with_one_line_naming_both(
    indexed: Path, student: Path, other: Path, capsys: pytest.CaptureFixture
) -> None:
    capsys.readouterr()
    assert cli("search", indexed, query_of(indexed), "--model", other) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("embdistill search: error: model ")
    assert str(other.resolve()) in lines[0] and str(indexed) in lines[0] and str(student.resolve()) in lines[0]
    assert checkpoint_fingerprint(other)[:12] in lines[0] and checkpoint_fingerprint(student)[:12] in lines[0]
    assert "--allow-other-space" in lines[0]


def test_search_takes_another_space_when_asked(indexed: Path, other: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert cli("search", indexed, query_of(indexed), "--model", other, "--allow-other-space", "-k", "5") == 0
    captured = capsys.readouterr()
    assert f"(model {other.resolve()})" in captured.out and len(result_rows(captured.out)) == 5
    assert captured.err == ""


def test_search_accepts_the_gallerys_own_onnx_and_int8_exports(
    indexed: Path, student: Path, student_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    int8 = export_checkpoint(student, "onnx", tmp_path / "student.int8.onnx", quantize="int8", verify=False,
                             quant_settings=DEFAULT_SETTINGS.with_(images=8, batch_size=8)).path
    assert read_onnx_metadata(int8).model_fingerprint == checkpoint_fingerprint(student)
    query = query_of(indexed)
    capsys.readouterr()
    for model in (student_onnx, int8):
        assert cli("search", indexed, query, "--model", model, "-k", "3") == 0
        captured = capsys.readouterr()
        rows = result_rows(captured.out)
        assert f"(model {model.resolve()})" in captured.out and captured.err == ""
        assert rows[0][2] == query and float(rows[0][1]) > 0.9  # the photo finds itself across fp32 / int8


def test_a_gallery_without_a_fingerprint_is_searched_with_one_warning_line(
    indexed: Path, other: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A sidecar as embdistill wrote it before fingerprints: no model_fingerprint key."""
    old = tmp_path / "old.faiss"
    old.write_bytes(indexed.read_bytes())
    sidecar = json.loads(Path(f"{indexed}.json").read_text())
    del sidecar["model_fingerprint"]
    Path(f"{old}.json").write_text(json.dumps(sidecar))
    assert search_warnings(capsys, old, query_of(indexed), other) == [
        f"embdistill search: warning: gallery {old} records no model fingerprint (embedded before embdistill recorded "
        f"one), so whether {other.resolve()} embeds into its space is unchecked; re-embed it with `embdistill embed`"
    ]


def test_an_undecodable_query_photo_is_named_without_a_training_option(
    indexed: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    photo = Path(query_of(indexed))
    half = tmp_path / "half.jpg"
    half.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    capsys.readouterr()
    assert cli("search", indexed, half) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embdistill search: error: query image {half} cannot be decoded")
    assert "data." not in lines[0] and "training" not in lines[0]


def test_an_export_without_a_fingerprint_is_used_with_one_warning_line(
    indexed: Path, student_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An ONNX file as `embdistill export` wrote it before fingerprints: no model_fingerprint prop."""
    import onnx

    proto = onnx.load(str(student_onnx))
    props = {p.key: p.value for p in proto.metadata_props if p.key != "model_fingerprint"}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    assert search_warnings(capsys, indexed, query_of(indexed), old) == [
        f"embdistill search: warning: model {old.resolve()} records no fingerprint (exported before embdistill recorded "
        f"one), so whether it embeds into the space of gallery {indexed} is unchecked; re-export it"
    ]
