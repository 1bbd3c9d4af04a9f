"""The loader hands out uint8 views drawn from a private generator (engine/batches/views.py); nothing a run sees changed.

Teacher banks are keyed by the crop's description, not its pixels, so the boxes and flips must be exactly the
old ones (torchvision's draw from torch's global RNG, forked and reseeded per image), and the normalised inputs
exactly the old per-image ``ToTensor`` + ``Normalize``: both are checked against the old path, kept in
benchmarks/speed/input_pipeline.py (``old_getitem``), on real cub100 images.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from conftest import REPO, TIMEOUT_SCALE
from embdistill.data.datasets import load_dataset
from embdistill.data.images import DecodedImageCache, ImageDataset
from embdistill.data.transforms import IMAGENET, KERAS, Degrade, draw_box
from embdistill.engine.batches.views import ViewCrop, ViewDataset, crop_seed, to_input

from benchmarks.speed import input_pipeline as bench


@pytest.fixture(scope="module")
def items(cub100):
    return load_dataset("cub200", cub100, "train").subset(list(range(0, 600, 25)))  # 24 images of 10 species


@pytest.mark.parametrize("resize", ["crop", "squash", "pad"])
def test_boxes_and_flips_are_the_old_draws(items, resize):
    images = [ImageDataset(items).load_image(i) for i in range(len(items))]
    images.append(Image.new("RGB", (300, 40)))  # 7.5:1: crop's 4:3 box rarely fits, so its fallback is drawn too
    crop = ViewCrop(64, 96, IMAGENET, resize=resize)
    aspect_of = (lambda im: 1.0) if resize == "crop" else (lambda im: im.width / im.height)
    for index, image in enumerate(images):
        ratio = [crop.ratio[0] * aspect_of(image), crop.ratio[1] * aspect_of(image)]
        for view in range(12):
            seed = crop_seed(7, index, view)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                old = T.RandomResizedCrop.get_params(image, list(crop.scale), ratio), bool(torch.rand(1) < 0.5)
            assert crop.draw(image, torch.Generator().manual_seed(seed)) == old, (resize, index, view)
    # A scale no box reaches within 10 draws: the centred fallback, as torchvision's.
    wide = images[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fallback = T.RandomResizedCrop.get_params(wide, [1.0, 1.0], [3 / 4, 4 / 3])
    assert draw_box(wide, (1.0, 1.0), (3 / 4, 4 / 3), "crop", torch.Generator().manual_seed(0)) == fallback == (0, 123, 40, 53)


@pytest.mark.parametrize("resize,degrade", [("crop", None), ("squash", None), ("pad", None), ("crop", Degrade(24))])
def test_normalised_views_are_the_old_float_views(items, resize, degrade):
    cache = DecodedImageCache(size=110)
    views = ViewDataset(ImageDataset(items, cache=cache), ViewCrop(64, 96, KERAS, resize=resize), seed=3, degrade=degrade)
    before = torch.get_rng_state()
    for view in (0, 1):
        views.set_view(view)
        new = [views[i] for i in range(len(views))]
        old = [bench.old_getitem(views, i) for i in range(len(views))]
        for part in (0, 1):  # student, teacher
            batch = torch.stack([n[part] for n in new])
            assert batch.dtype == (torch.float32 if resize == "pad" else torch.uint8)
            assert torch.equal(to_input(batch, KERAS, torch.device("cpu")), torch.stack([o[part] for o in old]))
        assert [n[2:] for n in new] == [o[2:] for o in old]
    assert torch.equal(torch.get_rng_state(), before)  # the views leave torch's global RNG alone


def test_to_input_gives_the_networks_layout(items):
    views = ViewDataset(ImageDataset(items), ViewCrop(32, 32, IMAGENET), seed=0, teacher_images=False)
    batch = torch.stack([views[i][0] for i in range(4)])
    x = to_input(batch, IMAGENET, torch.device("cpu"), torch.channels_last)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, to_input(batch, IMAGENET, torch.device("cpu")))


@pytest.mark.slow
def test_smoke_measures_both_sizes_with_a_real_run(tmp_path, cub100):
    results = tmp_path / "results" / "pipe.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed.input_pipeline", "--smoke", "--data", str(cub100), "--out", str(tmp_path / "out"),
                           "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=600 * TIMEOUT_SCALE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(results.read_text())
    assert result["smoke"] and [r["image_size"] for r in result["rows"]] == list(bench.SIZES)
    for row in result["rows"]:
        assert row["forward_backward_images_per_s"] > 0 and row["getitem_ms"]["old"] > 0 and row["getitem_ms"]["new"] > 0
        assert [(r["workers"], r["steps"]) for r in row["runs"]] == [(1, 3), (0, 3)] and all(r["ratio"] > 0 for r in row["runs"])
    assert "| 96 | 16 | 1 |" in results.with_suffix(".md").read_text()
