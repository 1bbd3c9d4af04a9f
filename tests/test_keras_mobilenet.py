"""MobileNetV1 with Keras applications' ImageNet weights: the mapping, TF's SAME padding, bad files, where
the file comes from, and what the real weights do on real birds."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from embdistill.config import DataConfig
from embdistill.data.transforms import KERAS
from embdistill.engine.scoring.embed import evaluate_embedder
from embdistill.engine.batches.loaders import eval_loader, load_splits
from embdistill.config import ModelConfig
from embdistill.models import WeightsError, create_backbone, create_embedder, resolve_weights
from embdistill.models.mobilenet import _conv_bn, keras_mobilenet_v1_weights
from embdistill.models.weights import hub_checkpoint_dir

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SHA256 = "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"
# Output channels of the 13 pointwise convs at width 1.0; depthwise strides 2 at blocks 2, 4, 6 and 12.
POINTWISE = [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]


def write_keras_mobilenet(path: Path, width: float = 0.25, seed: int = 0, drop: str | None = None) -> dict[str, np.ndarray]:
    """A MobileNet weights file in Keras's HDF5 layout (``layer_names``, per-layer ``weight_names``,
    ``LAYER/LAYER/NAME:0`` arrays) with random values; returns the arrays by ``LAYER/NAME``."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}

    def add(layer: str, **weights: tuple[int, ...]) -> None:
        for name, shape in weights.items():
            arrays[f"{layer}/{name}"] = rng.standard_normal(shape).astype(np.float32)

    def bn(layer: str, c: int) -> None:
        add(layer, gamma=(c,), beta=(c,), moving_mean=(c,))
        arrays[f"{layer}/moving_variance"] = rng.uniform(0.5, 2.0, c).astype(np.float32)

    c = max(8, int(32 * width))
    add("conv1", kernel=(3, 3, 3, c))
    bn("conv1_bn", c)
    for i, out in enumerate(POINTWISE, start=1):
        out = max(8, int(out * width))
        add(f"conv_dw_{i}", depthwise_kernel=(3, 3, c, 1))
        bn(f"conv_dw_{i}_bn", c)
        add(f"conv_pw_{i}", kernel=(1, 1, c, out))
        bn(f"conv_pw_{i}_bn", out)
        c = out
    layers = list(dict.fromkeys(k.split("/")[0] for k in arrays))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array(["input_1", *[x for x in layers if x != drop]], dtype="S")
        f.attrs["keras_version"] = b"2.0.4"
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S")
        for layer in layers:
            if layer == drop:
                continue
            group = f.create_group(layer)
            names = [k.split("/")[1] for k in arrays if k.split("/")[0] == layer]
            group.attrs["weight_names"] = np.array([f"{layer}/{n}:0" for n in names], dtype="S")
            for n in names:
                group.create_dataset(f"{layer}/{n}:0", data=arrays[f"{layer}/{n}"])
    return arrays


# --------------------------------------------------------------------------- the mapping


def test_every_keras_array_lands_in_its_module_with_pytorch_layout(tmp_path):
    path = tmp_path / "mobilenet.h5"
    arrays = write_keras_mobilenet(path)
    net = create_backbone("mobilenet_v1", pretrained=str(path), width=0.25)
    stem_conv, stem_bn = net.stages["stem"][0][0], net.stages["stem"][0][1]
    # (kh, kw, in, out) -> (out, in, kh, kw)
    assert torch.equal(stem_conv.weight, torch.from_numpy(arrays["conv1/kernel"]).permute(3, 2, 0, 1))
    assert torch.equal(stem_bn.running_var, torch.from_numpy(arrays["conv1_bn/moving_variance"]))
    assert torch.equal(stem_bn.weight, torch.from_numpy(arrays["conv1_bn/gamma"]))
    assert torch.equal(stem_bn.bias, torch.from_numpy(arrays["conv1_bn/beta"]))
    # Block 2 (stride 2) opens stage1; block 13 closes stage4.
    dw2, pw2 = net.stages["stage1"][0], net.stages["stage1"][1]
    kernel = arrays["conv_dw_2/depthwise_kernel"]  # (3, 3, 16, 1) -> (16, 1, 3, 3)
    assert dw2[0].weight.shape == (16, 1, 3, 3) and dw2[0].groups == 16 and dw2[0].stride == (2, 2)
    assert torch.equal(dw2[0].weight[5, 0], torch.from_numpy(kernel[:, :, 5, 0]))
    pw = arrays["conv_pw_2/kernel"]  # (1, 1, 16, 32) -> (32, 16, 1, 1)
    assert torch.equal(pw2[0].weight[:, :, 0, 0], torch.from_numpy(pw[0, 0].T))
    assert torch.equal(pw2[1].running_mean, torch.from_numpy(arrays["conv_pw_2_bn/moving_mean"]))
    last = net.stages["stage4"][3]
    assert torch.equal(last[0].weight[:, :, 0, 0], torch.from_numpy(arrays["conv_pw_13/kernel"][0, 0].T))
    # Keras's BatchNorm epsilon and activation.
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert isinstance(net.stages["stem"][0][2], torch.nn.ReLU6)
    assert net.normalization == KERAS


def test_keras_layout_of_another_width_is_refused_with_one_line(tmp_path):
    path = tmp_path / "half.h5"
    write_keras_mobilenet(path, width=0.5)
    with pytest.raises(WeightsError) as err:
        create_backbone("mobilenet_v1", pretrained=str(path), width=0.25)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "width 0.5" in message and "expected the Keras applications MobileNet at width 0.25" in message


@pytest.mark.parametrize("problem", ["not_hdf5", "truncated", "no_layer", "not_keras"])
def test_wrong_files_stop_with_one_line_naming_the_file(tmp_path, problem):
    path = tmp_path / "weights.h5"
    if problem == "not_hdf5":
        path.write_text("these are not weights\n")
    elif problem == "truncated":
        write_keras_mobilenet(tmp_path / "whole.h5")
        whole = (tmp_path / "whole.h5").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif problem == "no_layer":
        write_keras_mobilenet(path, drop="conv_dw_13_bn")
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError) as err:
        create_backbone("mobilenet_v1", pretrained=str(path), width=0.25)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "expected the Keras applications MobileNet" in message
    if problem == "no_layer":
        assert "conv_dw_13_bn" in message


# --------------------------------------------------------------------------- TF's SAME padding


def _box_conv(stride: int) -> torch.nn.Module:
    block = _conv_bn(1, 1, 3, stride).eval()
    with torch.no_grad():
        block[0].weight.fill_(1.0)
        block[1].running_var.fill_(1.0 - 1e-3)  # BatchNorm becomes the identity: (x - 0) / sqrt(1) * 1 + 0
    block[2] = torch.nn.Identity()
    return block


def test_same_padding_at_an_even_size_pads_only_after():
    # 4x4 input, stride 2: TF pads 1 in total per side, 0 before and 1 after, so the 2x2 output's first
    # window is rows/cols 0-2 and the second rows/cols 2-4 (4 being padding).
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = _box_conv(2)(x)[0, 0]
    expected = torch.tensor([[x[0, 0, 0:3, 0:3].sum(), x[0, 0, 0:3, 2:4].sum()],
                             [x[0, 0, 2:4, 0:3].sum(), x[0, 0, 2:4, 2:4].sum()]])
    assert out.shape == (2, 2)
    assert torch.allclose(out, expected, atol=1e-4)
    assert out[0, 0].item() == pytest.approx(0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, abs=1e-4)  # 45: no pad row on top


def test_same_padding_at_an_odd_size_pads_both_sides():
    # 5x5 input, stride 2: 2 in total per side, 1 before and 1 after; output 3x3.
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = _box_conv(2)(x)[0, 0]
    assert out.shape == (3, 3)
    assert out[0, 0].item() == pytest.approx(0 + 1 + 5 + 6, abs=1e-4)  # the window starts one pixel above-left
    assert out[1, 1].item() == pytest.approx(x[0, 0, 1:4, 1:4].sum().item(), abs=1e-4)
    assert out[2, 2].item() == pytest.approx(18 + 19 + 23 + 24, abs=1e-4)


def test_stride_one_keeps_the_size_with_symmetric_padding():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = _box_conv(1)(x)[0, 0]
    assert out.shape == (4, 4) and out[0, 0].item() == pytest.approx(0 + 1 + 4 + 5, abs=1e-4)


# --------------------------------------------------------------------------- where the file comes from


@pytest.fixture
def caches(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Empty private torch hub and Keras caches."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return hub_checkpoint_dir(), tmp_path / "keras_home" / "models"


def test_the_release_address_and_hash_follow_keras():
    source = keras_mobilenet_v1_weights(0.25, 224)
    assert source.filename == "mobilenet_2_5_224_tf_no_top.h5"
    assert source.url == "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_2_5_224_tf_no_top.h5"
    assert source.sha256 == SHA256
    assert keras_mobilenet_v1_weights(0.5, 128).filename == "mobilenet_5_0_128_tf_no_top.h5"
    with pytest.raises(WeightsError, match="not width 0.3 at 224 px"):
        keras_mobilenet_v1_weights(0.3, 224)
    with pytest.raises(WeightsError, match="not width 0.25 at 96 px"):
        keras_mobilenet_v1_weights(0.25, 96)


def test_a_copy_in_the_keras_cache_is_used_without_download(caches, monkeypatch, tmp_path):
    _, keras_cache = caches
    keras_cache.mkdir(parents=True)
    arrays = write_keras_mobilenet(keras_cache / "mobilenet_2_5_224_tf_no_top.h5", seed=3)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    net = create_backbone("mobilenet_v1", pretrained=True, width=0.25)
    assert torch.equal(net.stages["stem"][0][1].bias, torch.from_numpy(arrays["conv1_bn/beta"]))


def test_download_is_checked_against_the_release_hash(caches, tmp_path, monkeypatch):
    if not WEIGHTS.is_file():
        pytest.skip(f"the shared Keras weights are not at {WEIGHTS}")
    hub, _ = caches
    source = keras_mobilenet_v1_weights(0.25, 224)
    local = dataclasses.replace(source, url=WEIGHTS.as_uri())  # the release, served from this disk
    path = resolve_weights(local)
    assert path == hub / "mobilenet_2_5_224_tf_no_top.h5"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256
    path.unlink()
    fake = tmp_path / "fake.h5"
    write_keras_mobilenet(fake)
    with pytest.raises(WeightsError) as err:  # same name, other bytes: the hash stops it
        resolve_weights(dataclasses.replace(source, url=fake.as_uri()))
    assert "hash" in str(err.value)
    assert not path.exists()


def test_pretrained_true_offline_says_where_it_looked(caches, monkeypatch):
    hub, keras_cache = caches
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    with pytest.raises(WeightsError) as err:
        create_backbone("mobilenet_v1", pretrained=True, width=0.25)
    message = str(err.value)
    assert str(hub / "mobilenet_2_5_224_tf_no_top.h5") in message
    assert str(keras_cache / "mobilenet_2_5_224_tf_no_top.h5") in message
    assert "keras-applications/mobilenet/mobilenet_2_5_224_tf_no_top.h5" in message


# --------------------------------------------------------------------------- the real release on real birds


@pytest.mark.slow
def test_real_imagenet_weights_retrieve_unseen_birds_far_better_than_random(cub100):
    if not WEIGHTS.is_file():
        pytest.skip(f"the shared Keras weights are not at {WEIGHTS}")
    data = DataConfig(root=str(cub100), num_workers=0)
    test = load_splits(data).eval
    few = test.class_subset(range(8))  # 8 unseen species, about 470 images
    scores = {}
    for pretrained in (str(WEIGHTS), False):
        torch.manual_seed(0)
        model = create_embedder(ModelConfig(backbone="mobilenet_v1", pretrained=pretrained, dim=None,
                                            backbone_args={"width": 0.25})).eval()
        loader = eval_loader(few, 96, model.normalization, 64, 0)
        scores[bool(pretrained)] = evaluate_embedder(model, loader, torch.device("cpu"), progress=False)["recall@1"]
    assert scores[True] > 0.55, scores
    assert scores[True] > scores[False] + 0.2, scores
