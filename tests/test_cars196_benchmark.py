"""python -m benchmarks.cars196 --smoke: every row of the Cars-196 strong benchmark, tiny, on the real cars, in the birds' schema."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import cars196 as bench
from conftest import REPO, TIMEOUT_SCALE
from embdistill.config import load_config

CARS196 = REPO.parent / "shared" / "data" / "cars196"
KERAS_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SCRIPT = ["-m", "benchmarks.cars196"]
BIRDS_ROWS = REPO / "configs" / "cub100" / "strong" / "rows"


def test_smoke_runs_every_row_choosing_its_epoch_on_24_held_out_models(tmp_path):
    if not CARS196.is_dir():
        pytest.skip(f"the Cars-196 folders are not at {CARS196}")
    if not KERAS_WEIGHTS.is_file():
        pytest.skip(f"the paper's student's Keras weights are not at {KERAS_WEIGHTS}")
    committed = REPO / "benchmarks" / "results" / "cars196.json"
    before = committed.stat().st_mtime_ns if committed.is_file() else None
    done = subprocess.run([sys.executable, *SCRIPT, "--smoke", "--seeds", "0", "--output", str(tmp_path / "cars")],
                          cwd=REPO, capture_output=True, text=True, timeout=900 * TIMEOUT_SCALE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "cars_smoke"  # --smoke writes under --output + "_smoke", never to benchmarks/results
    assert (committed.stat().st_mtime_ns if committed.is_file() else None) == before
    result = json.loads((out / "cars196.json").read_text())
    assert (out / "cars196.md").read_text().startswith(f"# cars196 with a strong, banked teacher: {len(result['rows'])} rows")

    assert set(result) == {"command", "machine", "minutes", "seeds", "teacher_image_size", "student_image_size", "bank",
                           "banks", "students", "teacher", "rows"}  # the birds' strong benchmark's keys
    assert result["seeds"] == [0] and result["teacher_image_size"] == 48 and result["student_image_size"] == 32
    assert result["command"].startswith("python -m benchmarks.cars196 --smoke")
    assert sorted(result["banks"]) == ["lite0_48_v1_keras_val24.bank", "lite0_48_v1_val24.bank"]  # one per normalisation
    assert result["bank"] == result["banks"]["lite0_48_v1_val24.bank"]
    assert set(result["students"]) == {"MobileNetV2 (ImageNet)", "MobileNet-0.25 (ImageNet)"}
    teacher = result["teacher"]["config"]
    assert teacher["data"]["dataset"] == "cars196" and teacher["data"]["resize"] == "squash"
    assert teacher["model"]["backbone"] == "efficientnet_lite0" and teacher["model"]["dim"] is None
    # The teacher is fine-tuned as the students are: on the other train models, its epoch chosen on the same 24, scored on test.
    assert teacher["data"]["validation_classes"] == 24 and teacher["eval"]["split"] == "test" and teacher["train"]["select"] == "best"
    assert result["teacher"]["epoch"] == 1 and len(result["teacher"]["validation_curve"]) == 1
    assert all(r["config"]["distill"]["teacher"].endswith("teacher_lite0_224_ft/best.pt") for r in result["rows"] if r["config"].get("distill"))

    assert [(r["student"], r["method"], r["seeds"]) for r in result["rows"]] == [
        (s.name, m.key, m.seeds) for s in bench.STUDENTS for m in s.methods]
    assert {r["method"]: r["seeds"] for r in result["rows"]} == {
        "alone": "all", "alone_cars": "all", "absolute": "one", "absolute_cars": "all", "relative": "one", "relative_paper_lambda": "one",
        "relative_scaled": "all", "relative_scaled_cars": "all", "rkd": "one"}
    for r in result["rows"]:
        c = r["config"]
        assert c["data"]["dataset"] == "cars196" and c["data"]["resize"] == "squash", r["method"]
        assert c["data"]["validation_classes"] == 24 and c["eval"]["split"] == "test" and c["eval"]["every_epochs"] == 1
        assert c["train"]["select"] == "best" and c["train"]["patience"] == 4
        assert bool(c.get("distill")) == (not r["method"].startswith("alone"))
        assert len(r["runs"]) == 1 and r["ran"]["command"] == result["command"]
        for run in r["runs"]:
            assert run["epoch"] == 1 and run["selected"]["epochs_trained"] == 1 and len(run["validation_curve"]) == 1
    # The birds' recipe as it is: MobileNetV2's relative row keeps its backbone rate, the paper's student its 16 × 4.
    v2_relative = next(r for r in result["rows"] if r["student"] == "MobileNetV2 (ImageNet)" and r["method"] == "relative")
    assert v2_relative["config"]["train"]["backbone_lr_mult"] == 1.0
    assert v2_relative["config"]["distill"]["terms"][0]["weight"] == 10.0
    paper = next(r for r in result["rows"] if r["student"] == "MobileNetV2 (ImageNet)" and r["method"] == "relative_paper_lambda")
    assert paper["config"]["distill"]["terms"] == [{"name": "relative", "weight": 0.1, "args": {"reduction": "frobenius"},
                                                    "until_epoch": None}]
    assert paper["config"]["train"] == v2_relative["config"]["train"]
    keras_alone = next(r for r in result["rows"] if r["student"] == "MobileNet-0.25 (ImageNet)" and r["method"] == "alone")
    assert keras_alone["config"]["train"]["classes_per_batch"] == 16 and keras_alone["config"]["train"]["metric_loss"] == "multi_similarity"

    # --rows reruns a part (here reusing its finished run) and keeps the other rows from the JSON.
    again = subprocess.run([sys.executable, *SCRIPT, "--smoke", "--seeds", "0", "--output", str(tmp_path / "cars"),
                            "--rows", "mobilenet025_imagenet/rkd"], cwd=REPO, capture_output=True, text=True, timeout=600 * TIMEOUT_SCALE)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    merged = json.loads((out / "cars196.json").read_text())
    assert [(r["student"], r["method"]) for r in merged["rows"]] == [(r["student"], r["method"]) for r in result["rows"]]
    rerun = [r["ran"]["command"].endswith("--rows mobilenet025_imagenet/rkd") for r in merged["rows"]]
    assert rerun == [False] * (len(rerun) - 1) + [True]
    assert merged["rows"][-1]["runs"] == result["rows"][-1]["runs"] and merged["banks"] == result["banks"]


def test_each_row_is_a_config_file_holding_the_birds_recipe_unless_chosen_again_on_cars():
    train_keys = ("epochs", "lr", "backbone_lr_mult", "classes_per_batch", "images_per_class", "metric_loss", "metric_loss_args")
    chosen_on_cars = {"mobilenet_v2/relative_scaled_cars": 10, "mobilenet025_imagenet/alone_cars": 20,
                      "mobilenet025_imagenet/absolute_cars": 20, "mobilenet025_imagenet/relative_scaled_cars": 20}
    seen = set()
    for student in bench.STUDENTS:
        stem = student.config.removesuffix(".yaml")
        for method in student.methods:
            row = f"{stem}/{method.key}"
            seen.add(row)
            cfg = load_config(bench.TABLE.row_config(student, method))  # runs as it stands: `embdistill distill -c`
            assert cfg.name == f"{row}/seed0" and cfg.data.dataset == "cars196" and cfg.data.resize == "squash", row
            assert cfg.data.validation_classes == 24 and cfg.train.select == "best" and cfg.train.patience == 4, row
            birds_key = {"relative_paper_lambda": "relative"}.get(method.key, method.key.removesuffix("_cars"))
            birds = load_config(BIRDS_ROWS / stem / f"{birds_key}.yaml")
            train, birds_train = ({k: getattr(c.train, k) for k in train_keys} for c in (cfg, birds))
            if row in chosen_on_cars:  # a cap chosen again on the 24 held-out car models; the rest is the birds'
                assert train == {**birds_train, "epochs": chosen_on_cars[row]}, row
                assert method.seeds == "all", row
            else:
                assert train == birds_train, row  # the birds' recipe as it is
            assert (cfg.distill is None) == (birds.distill is None) == method.key.startswith("alone"), row
            if cfg.distill is None:
                continue
            assert cfg.distill.teacher == "runs/cars196_strong/teacher_lite0_224_ft/best.pt", row
            assert cfg.distill.bank.endswith(("_keras_val24.bank" if student.bank_tag else "_v4_val24.bank")), row
            terms = [dict(name=t.name, weight=t.weight, args=t.args) for t in cfg.distill.terms]
            if method.key == "relative_paper_lambda":  # the authors' Cars λ on their Frobenius form
                assert terms == [{"name": "relative", "weight": 0.1, "args": {"reduction": "frobenius"}}]
            else:
                assert terms == [dict(name=t.name, weight=t.weight, args=t.args) for t in birds.distill.terms], row
    assert seen >= set(chosen_on_cars)
    m025 = {m.key: m for s in bench.STUDENTS if s.config == "mobilenet025_imagenet.yaml" for m in s.methods}
    # Its student alone was chosen again too (a longer cap), so its rows chosen on cars are measured against that.
    assert {k: m.baseline for k, m in m025.items() if m.baseline != "alone"} == dict.fromkeys(
        ["alone_cars", "absolute_cars", "relative_scaled_cars"], "alone_cars")


def test_rows_run_before_any_table_exists_make_the_table_and_later_rows_merge_into_it(tmp_path):
    previous = tmp_path / "cars196.json"
    first = {"rows": [{"student": "MobileNetV2 (ImageNet)", "method": "alone"}], "banks": {"a.bank": {"views": 4}}}
    assert bench.TABLE.keep_other_rows(first, previous, main_bank="a.bank") is first  # a long table, started a part at a time
    previous.write_text(json.dumps(first))
    later = {"rows": [{"student": "MobileNetV2 (ImageNet)", "method": "relative_scaled"}], "banks": {}}
    merged = bench.TABLE.keep_other_rows(later, previous, main_bank="a.bank")
    assert [r["method"] for r in merged["rows"]] == ["alone", "relative_scaled"] and merged["bank"] == {"views": 4}
