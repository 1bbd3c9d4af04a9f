"""`embdistill demo` end to end on real CUB images, shrunk: its three recipes, the bank, the table and the report."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import REPO, cub_subset
from embdistill.cli import main
from embdistill.config import load_config
from embdistill.demo import CONFIG_DIR, STEPS


def test_demo_recipes_choose_on_held_out_species_and_score_the_test_species_once() -> None:
    for name in STEPS:
        cfg = load_config(CONFIG_DIR / name)
        assert cfg.data.validation_classes == 14 and cfg.eval.split == "test", name
        assert cfg.train.select == ("last" if name == "teacher.yaml" else "best"), name
    distilled = load_config(CONFIG_DIR / "distilled.yaml")
    teacher = load_config(CONFIG_DIR / "teacher.yaml")
    assert distilled.distill.teacher_image_size == teacher.data.image_size  # the bank is filled at the size the teacher is scored at
    assert distilled.model == load_config(CONFIG_DIR / "student.yaml").model  # one student, alone and distilled


def test_make_demo_runs_its_recipes_and_writes_the_table(tmp_path: Path, cub100: Path, capsys) -> None:
    data = cub_subset(tmp_path, cub100, per_split=8, per_class=8)  # 8 train species (2 held out), 8 test species
    out = tmp_path / "demo"
    small = ["data.image_size=32", "data.validation_classes=2", "data.num_workers=0", "data.cache_images=false",
             "train.classes_per_batch=3", "train.images_per_class=4", "train.batches_per_epoch=2", "eval.batch_size=64"]
    assert main(["demo", "--data", str(data), "--output", str(out), "--no-progress", *small]) == 0

    rows = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in rows] == ["teacher", "student", "distilled"]
    assert rows[0]["epoch"] is None and all(1 <= r["epoch"] <= 8 for r in rows[1:])  # the students kept an epoch
    for row in rows:
        summary = yaml.safe_load((out / row["run"] / "summary.yaml").read_text())
        assert summary["split"] == "test" and round(100 * summary["recall@1"], 1) == row["recall@1"]
    distilled = yaml.safe_load((out / "distilled" / "summary.yaml").read_text())
    assert distilled["teacher_forward_images"] == 0  # it read the bank the demo filled
    assert (out / "teacher.bank").is_file() and (out / "report.md").is_file()
    table = (out / "results.md").read_text()
    assert "Distillation: R@1" in table and table in capsys.readouterr().out
    assert (REPO / "configs" / "cub100" / "demo") == CONFIG_DIR
