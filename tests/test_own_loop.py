"""docs/own_loop.md's code block, run as written on real CUB images: the docs cannot go stale."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from conftest import REPO

PAGE = REPO / "docs" / "own_loop.md"
CLASSES, PER_CLASS = 4, 4


def snippet() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, f"{PAGE} should hold exactly one python block, found {len(blocks)}"
    return blocks[0]


def cub_subset(cub100: Path, root: Path) -> Path:
    """An ImageFolder of 4 real CUB classes x 4 images, as links to the shared data (nothing copied)."""
    for class_dir in sorted((cub100 / "images").iterdir())[:CLASSES]:
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.jpg"))[:PER_CLASS]:
            (root / class_dir.name / image.name).symlink_to(image)
    return root


def run_snippet(data_root: Path, epochs: int) -> dict[str, Any]:
    """Exec the block with the three names the page asks the reader to set; same seed, same networks."""
    torch.manual_seed(0)
    namespace: dict[str, Any] = {"data_root": str(data_root), "image_size": 32, "epochs": epochs}
    exec(compile(snippet(), str(PAGE), "exec"), namespace)
    return namespace


def test_own_loop_trains_the_student_and_leaves_the_teacher(tmp_path: Path, cub100: Path) -> None:
    data_root = cub_subset(cub100, tmp_path / "birds")
    before = run_snippet(data_root, epochs=0)  # the same seed builds the same two networks: their start state
    after = run_snippet(data_root, epochs=2)  # 16 images, batch 16: two optimizer steps

    assert torch.isfinite(after["loss"]) and after["loss"].item() > 0
    cache = after["cache"]
    assert cache.shape == (CLASSES * PER_CLASS, 128)
    assert torch.allclose(cache.norm(dim=1), torch.ones(len(cache)))
    assert torch.equal(cache, before["cache"])
    for name, start in before["teacher"].state_dict().items():
        assert torch.equal(after["teacher"].state_dict()[name], start), f"teacher {name} changed"
    start = dict(before["student"].named_parameters())
    for name, param in after["student"].named_parameters():
        assert not torch.equal(param, start[name]), f"student {name} did not train"
    # The distillation term is live: the student's geometry differs from the teacher's.
    images, labels, index = next(iter(after["loader"]))
    with torch.no_grad():
        emb = torch.nn.functional.normalize(after["student"].eval()(images), dim=1)
    assert after["relative"](emb, after["cache"][index]).item() > 0
