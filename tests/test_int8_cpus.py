"""INT8 that is right on every CPU: what the CPU's integer kernels are, which files saturate where,
and, under an emulated x86 CPU without VNNI, that the default settings give the native embeddings."""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO
from embdistill.deploy import cpu_features
from embdistill.deploy.cpu_features import CpuInt8, cpu_int8, cpuid
from embdistill.deploy.quantize import DEFAULT_SETTINGS, precise_session_config, quantization_record, quantize_onnx, saturates_without_vnni

HASWELL = CpuInt8("x86_64", "Haswell", ("avx2",), "cpuid")
ICE_LAKE = CpuInt8("x86_64", "Ice Lake", ("avx2", "avx512f", "avx512bw", "avx512_vnni"), "cpuid")


@pytest.mark.parametrize(
    ("cpu", "saturates", "phrase"),
    [
        (HASWELL, True, "avx2 without VNNI"),
        (CpuInt8("x86_64", "Skylake-SP", ("avx2", "avx512f", "avx512bw"), "cpuid"), True, "avx512bw without VNNI"),
        (ICE_LAKE, False, "avx512_vnni"),
        (CpuInt8("x86_64", "Alder Lake", ("avx2", "avx_vnni"), "cpuid"), False, "avx_vnni"),
        (CpuInt8("x86_64", "Sapphire Rapids", ("avx2", "avx512_vnni", "amx_int8"), "cpuid"), False, "amx_int8"),
        (CpuInt8("aarch64", "Neoverse", ("asimddp",), "/proc/cpuinfo"), False, "32-bit"),
        (CpuInt8("aarch64", "Cortex-A53", (), "/proc/cpuinfo"), False, "32-bit"),
        (CpuInt8("x86_64", "?", (), "unknown"), None, "unknown"),
    ],
)
def test_which_cpus_sum_u8s8_in_saturating_16_bits(cpu: CpuInt8, saturates: bool | None, phrase: str) -> None:
    assert cpu.u8s8_saturates is saturates
    assert phrase in cpu.int8_path
    assert cpu.to_dict()["u8s8_saturates"] is saturates and cpu.to_dict()["features"] == list(cpu.features)


def test_this_cpu_is_read_through_cpuid_where_it_can_be() -> None:
    cpu = cpu_int8()
    assert cpu.machine == platform.machine()
    if platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32":
        _, ebx, ecx, edx = cpuid(0)
        vendor = b"".join(v.to_bytes(4, "little") for v in (ebx, edx, ecx)).decode("ascii")
        assert vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls", "  Shanghai  ")
        assert cpu.source == "cpuid" and cpu.u8s8_saturates in (True, False)
    else:
        assert cpuid(0) is None


@pytest.mark.parametrize(
    ("record", "saturates"),
    [
        (quantization_record(DEFAULT_SETTINGS, "int8", "x"), False),  # uint8 weights: exact everywhere
        (quantization_record(DEFAULT_SETTINGS.with_(weight_type="int8"), "int8", "x"), True),
        (quantization_record(DEFAULT_SETTINGS.with_(weight_type="int8", reduce_range=True), "int8", "x"), False),
        ({"mode": "int8", "activation_type": "uint8"}, True),  # a record older than weight_type: U8S8 then
        (quantization_record(DEFAULT_SETTINGS.with_(format="qoperator", bias_correction=False), "int8", "x"), True),  # its convs: int8 anyway
        (None, False),  # a float file
    ],
)
def test_files_that_saturate_without_vnni(record: dict | None, saturates: bool) -> None:
    assert saturates_without_vnni(record) is saturates


def test_a_u8s8_file_runs_exactly_on_a_cpu_without_vnni_with_one_warning_line(monkeypatch: pytest.MonkeyPatch) -> None:
    old = quantization_record(DEFAULT_SETTINGS.with_(weight_type="int8"), "int8", "x")
    monkeypatch.setattr(cpu_features, "cpu_int8", lambda: HASWELL)
    with pytest.warns(UserWarning) as caught:
        config = precise_session_config(old, "model m.int8.onnx")
    assert config == {"session.x64quantprecision": "1"}
    message = str(caught[0].message)
    assert len(caught) == 1 and "\n" not in message and "m.int8.onnx" in message and "saturating" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: the default file, or a CPU with VNNI
        assert precise_session_config(quantization_record(DEFAULT_SETTINGS, "int8", "x"), "m") == {}
        monkeypatch.setattr(cpu_features, "cpu_int8", lambda: ICE_LAKE)
        assert precise_session_config(old, "m") == {}


# ----------------------------------------------------------------------------- the emulated CPU without VNNI


class _Reader:
    """Calibration batches for quantize_onnx: positive inputs up to 1, so activations reach uint8's 255."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.done = x, False

    def get_next(self) -> dict | None:
        if self.done:
            return None
        self.done = True
        return {"x": self.x}

    def rewind(self) -> None:
        self.done = False


def _worst_case_model(path: Path) -> Path:
    """A 1x1 convolution whose weights are all at their largest magnitude: each pair of products is 255 x 127
    in U8S8, twice what a signed 16-bit lane holds, the case VNNI sums exactly and older x86 kernels saturate."""
    conv = nn.Conv2d(64, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.where(torch.arange(64) % 2 == 0, 1.0, 0.9).repeat(8, 1).view(8, 64, 1, 1))
    with warnings.catch_warnings():  # the TorchScript-based exporter's deprecation notice, as in export.py
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        torch.onnx.export(conv.eval(), (torch.rand(2, 64, 4, 4),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None or platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="needs qemu-x86_64 (Debian's qemu-user) on an x86-64 machine to emulate a CPU without VNNI")
def test_the_default_int8_gives_the_same_embeddings_without_vnni(tmp_path: Path) -> None:
    """Under ``qemu-x86_64 -cpu Haswell`` (AVX2, no VNNI) ONNX Runtime takes its saturating U8S8 kernels;
    the default (uint8 weights) and 7-bit int8 weights must give bit for bit what this CPU gives, and full-range
    int8 weights must show the damage."""
    fp32 = _worst_case_model(tmp_path / "fp32.onnx")
    x = np.full((4, 64, 4, 4), 1.0, dtype=np.float32)
    x[1:] = np.random.default_rng(0).uniform(0.5, 1.0, size=(3, 64, 4, 4))
    settings = DEFAULT_SETTINGS.with_(calibration_method="minmax", per_channel=False)
    models = [quantize_onnx(fp32, tmp_path / "default.onnx", _Reader(x), settings),
              quantize_onnx(fp32, tmp_path / "u8s8_7bit.onnx", _Reader(x), settings.with_(weight_type="int8", reduce_range=True)),
              quantize_onnx(fp32, tmp_path / "u8s8.onnx", _Reader(x), settings.with_(weight_type="int8"))]
    np.save(tmp_path / "x.npy", x)
    outputs = {}
    for name, emulate in (("native", []), ("haswell", ["qemu-x86_64", "-cpu", "Haswell"])):
        out = tmp_path / name
        out.mkdir()
        subprocess.run([*emulate, sys.executable, "-m", "benchmarks.parity.int8_cpu_paths", "--child",
                        str(tmp_path / "x.npy"), str(out), "{}", "1", *map(str, models)],
                       check=True, capture_output=True, timeout=1800, cwd=REPO)
        outputs[name] = {m.stem: np.load(out / f"{m.stem}.npy") for m in models}
        outputs[name]["cpu"] = json.loads((out / "cpu.json").read_text())
    assert outputs["haswell"]["cpu"]["u8s8_saturates"] is True  # the emulated CPU reached the saturating kernels
    import onnxruntime as ort

    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    scale = np.abs(reference).max()
    # the default (U8U8) and 7-bit U8S8: the same integers on both paths, and close to fp32
    for exact in ("default", "u8s8_7bit"):
        np.testing.assert_allclose(outputs["haswell"][exact], outputs["native"][exact], rtol=0, atol=1e-6 * scale)
        assert np.abs(outputs["haswell"][exact] - reference).max() < 0.03 * scale
    # U8S8 without VNNI: the pair sums clipped at 2^15 - 1 leave the output far from fp32
    assert np.abs(outputs["haswell"]["u8s8"] - reference).max() > 0.2 * scale
    if outputs["native"]["cpu"]["u8s8_saturates"] is False:  # with VNNI the same file is right
        assert np.abs(outputs["native"]["u8s8"] - reference).max() < 0.02 * scale
