"""benchmarks/cars196.py --smoke: every row of the Cars-196 strong benchmark, tiny, on the real cars, in the birds' schema."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, TIMEOUT_SCALE

CARS196 = REPO.parent / "shared" / "data" / "cars196"
KERAS_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SCRIPT = REPO / "benchmarks" / "cars196.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import cars196 as bench  # noqa: E402


def test_smoke_runs_every_row_choosing_its_epoch_on_24_held_out_models(tmp_path):
    if not CARS196.is_dir():
        pytest.skip(f"the Cars-196 folders are not at {CARS196}")
    if not KERAS_WEIGHTS.is_file():
        pytest.skip(f"the paper's student's Keras weights are not at {KERAS_WEIGHTS}")
    committed = REPO / "benchmarks" / "results" / "cars196.json"
    before = committed.stat().st_mtime_ns if committed.is_file() else None
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--seeds", "0", "--output", str(tmp_path / "cars")],
                          cwd=REPO, capture_output=True, text=True, timeout=900 * TIMEOUT_SCALE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "cars_smoke"  # --smoke writes under --output + "_smoke", never to benchmarks/results
    assert (committed.stat().st_mtime_ns if committed.is_file() else None) == before
    result = json.loads((out / "cars196.json").read_text())
    assert (out / "cars196.md").read_text().startswith(f"# cars196 with a strong, banked teacher: {len(result['rows'])} rows")

    assert set(result) == {"command", "machine", "minutes", "seeds", "teacher_image_size", "student_image_size", "bank",
                           "banks", "students", "teacher", "rows"}  # the birds' strong benchmark's keys
    assert result["seeds"] == [0] and result["teacher_image_size"] == 48 and result["student_image_size"] == 32
    assert result["command"].startswith("python benchmarks/cars196.py --smoke")
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
    assert paper["config"]["distill"]["terms"] == [{"name": "relative", "weight": 0.1, "args": {"reduction": "frobenius"}}]
    assert paper["config"]["train"] == v2_relative["config"]["train"]
    keras_alone = next(r for r in result["rows"] if r["student"] == "MobileNet-0.25 (ImageNet)" and r["method"] == "alone")
    assert keras_alone["config"]["train"]["classes_per_batch"] == 16 and keras_alone["config"]["train"]["metric_loss"] == "multi_similarity"

    # --rows reruns a part (here reusing its finished run) and keeps the other rows from the JSON.
    again = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--seeds", "0", "--output", str(tmp_path / "cars"),
                            "--rows", "mobilenet025_imagenet/rkd"], cwd=REPO, capture_output=True, text=True, timeout=600 * TIMEOUT_SCALE)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    merged = json.loads((out / "cars196.json").read_text())
    assert [(r["student"], r["method"]) for r in merged["rows"]] == [(r["student"], r["method"]) for r in result["rows"]]
    rerun = [r["ran"]["command"].endswith("--rows mobilenet025_imagenet/rkd") for r in merged["rows"]]
    assert rerun == [False] * (len(rerun) - 1) + [True]
    assert merged["rows"][-1]["runs"] == result["rows"][-1]["runs"] and merged["banks"] == result["banks"]


def test_rows_chosen_again_on_cars_or_at_the_papers_lambda_join_only_when_filled(monkeypatch):
    assert bench.PAPER_CARS_LAMBDA == 0.10  # the authors' run script's Cars λ
    assert [m.key for m in bench._rows("mobilenet_v2.yaml")] == ["alone", "absolute", "relative", "relative_paper_lambda",
                                                                 "relative_scaled", "relative_scaled_cars", "rkd"]
    m025 = {m.key: m for m in bench._rows("mobilenet025_imagenet.yaml")}
    assert list(m025) == ["alone", "alone_cars", "absolute", "absolute_cars", "relative", "relative_paper_lambda",
                          "relative_scaled", "relative_scaled_cars", "rkd"]
    assert {k: m.seeds for k, m in m025.items() if k.endswith("_cars")} == dict.fromkeys(
        ["alone_cars", "absolute_cars", "relative_scaled_cars"], "all")  # a row chosen again runs every seed
    # Its student alone was chosen again too (a longer cap), so its chosen distilled row is measured against that.
    assert m025["alone_cars"].overrides == m025["absolute_cars"].overrides == m025["relative_scaled_cars"].overrides == (
        "train.epochs=20",)
    assert (m025["alone_cars"].baseline, m025["absolute_cars"].baseline, m025["relative_scaled"].baseline) == (
        "alone_cars", "alone_cars", "alone")
    assert next(m for m in bench._rows("mobilenet_v2.yaml") if m.key == "relative_scaled_cars").baseline == "alone"
    monkeypatch.setattr(bench, "PAPER_CARS_LAMBDA", None)
    monkeypatch.setattr(bench, "CHOSEN_ON_CARS", {})
    assert [m.key for m in bench._rows("mobilenet_v2.yaml")] == ["alone", "absolute", "relative", "relative_scaled", "rkd"]
    monkeypatch.setattr(bench, "PAPER_CARS_LAMBDA", 2.5)
    birds_rkd = next(m for m in bench._rows("mobilenet_v2.yaml") if m.key == "rkd")
    monkeypatch.setattr(bench, "CHOSEN_ON_CARS", {"mobilenet_v2/rkd": ("train.epochs=9",),
                                                  "mobilenet_v2/absolute": ("train.epochs=6", "train.backbone_lr_mult=1.0")})
    rows = {m.key: m for m in bench._rows("mobilenet_v2.yaml")}
    assert list(rows) == ["alone", "absolute", "relative", "relative_paper_lambda", "relative_scaled", "rkd", "rkd_cars"]
    assert rows["relative_paper_lambda"].terms[0]["weight"] == 2.5
    assert rows["relative_paper_lambda"].overrides == rows["relative"].overrides  # the relative row's recipe
    assert rows["rkd_cars"].overrides == ("train.epochs=9",) and rows["rkd_cars"].terms == birds_rkd.terms
    assert rows["rkd"] == birds_rkd  # the birds' recipe stays beside it; absolute's chosen recipe is the birds': no second row
    assert rows["rkd_cars"].baseline == "alone"  # no student alone chosen on cars: measured against the birds' recipe alone
    birds_alone = next(m for m in bench._rows("mobilenet_v2.yaml") if m.key == "alone")
    monkeypatch.setitem(bench.CHOSEN_ON_CARS, "mobilenet_v2/alone", birds_alone.overrides)
    assert rows == {m.key: m for m in bench._rows("mobilenet_v2.yaml")}  # an alone "chosen" as the birds' is no baseline


def test_rows_run_before_any_table_exists_make_the_table_and_later_rows_merge_into_it(tmp_path):
    previous = tmp_path / "cars196.json"
    first = {"rows": [{"student": "MobileNetV2 (ImageNet)", "method": "alone"}], "banks": {"a.bank": {"views": 4}}}
    assert bench.TABLE.keep_other_rows(first, previous, main_bank="a.bank") is first  # a long table, started a part at a time
    previous.write_text(json.dumps(first))
    later = {"rows": [{"student": "MobileNetV2 (ImageNet)", "method": "relative_scaled"}], "banks": {}}
    merged = bench.TABLE.keep_other_rows(later, previous, main_bank="a.bank")
    assert [r["method"] for r in merged["rows"]] == ["alone", "relative_scaled"] and merged["bank"] == {"views": 4}
