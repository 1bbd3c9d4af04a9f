"""Every benchmark table re-renders from its committed JSON, and every benchmark's ``--smoke`` runs, in a temporary folder.

The renders are cheap (no model runs). The smokes run the scripts as ``python -m benchmarks.<name> --smoke`` and are
marked ``smoke`` (``pytest -m "not smoke"`` leaves them out); each writes only under ``tmp_path``. Three smokes have
their own modules, with closer checks: ``cars196`` (test_cars196_benchmark.py), ``gpu_paper_student``
(test_gpu_script.py) and ``input_pipeline`` (test_input_pipeline.py). ``asymmetric`` and ``label_free``, built on
``make demo``'s runs, make a tiny demo of their own (benchmarks/common/smoke.py).
"""
from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys

import pytest

from benchmarks.common import RESULTS, SHARED, cub_subset
from conftest import REPO, TIMEOUT_SCALE

KERAS_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"


def _rendered_by(module: str, function: str = "markdown"):
    """The table ``module.function(result)`` renders from its JSON (imported only when the test runs)."""
    return lambda result: getattr(importlib.import_module(module), function)(result)


def _with_rows(module: str):
    return lambda result: importlib.import_module(module).markdown(result, result["rows"])


# committed Markdown (under results/) -> how its script renders it from the JSON beside it
RENDERED = {
    "cub100_strong.md": _rendered_by("benchmarks.cub100_strong"),
    "cars196.md": _rendered_by("benchmarks.cars196"),
    "cars196_trials/cars196.md": _rendered_by("benchmarks.cars196"),
    "bank_speed.md": _rendered_by("benchmarks.speed.bank_speed"),
    "eval_scale.md": _rendered_by("benchmarks.speed.eval_scale"),
    "eval_scale_quiet.md": _rendered_by("benchmarks.speed.eval_scale"),
    "input_pipeline.md": lambda r: importlib.import_module("benchmarks.speed.input_pipeline").table(r) + "\n",
    "int8_parity.md": _with_rows("benchmarks.parity.int8_parity"),
    "int8_parity_imagenet.md": _with_rows("benchmarks.parity.int8_parity"),
    "int8_cpu_paths.md": _with_rows("benchmarks.parity.int8_cpu_paths"),
    "int8_cpu_paths_precise84.md": _with_rows("benchmarks.parity.int8_cpu_paths"),
    "asymmetric_cub100.md": _rendered_by("benchmarks.asymmetric"),
    "asymmetric_cub100_tuning.md": _rendered_by("benchmarks.asymmetric", "tuning_markdown"),
    "label_free_cub100.md": _rendered_by("benchmarks.label_free"),
}
# committed Markdown that no script renders from a JSON, and why (benchmarks/README.md says the same)
NOT_RENDERED = {
    "cub100.md": "benchmarks/cub100.py is retired (its last version: commit d196be9)",
    "export_speed.md": "export_speed writes no JSON",
    "export_speed_int8.md": "export_speed writes no JSON",
    "cub100_tuning.md": "hand-written", "cub100_strong_tuning.md": "hand-written", "cars196_tuning.md": "hand-written",
}


def test_every_committed_table_is_rendered_or_says_why_not():
    tables = {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*.md")}
    assert tables <= set(RENDERED) | set(NOT_RENDERED), sorted(tables - set(RENDERED) - set(NOT_RENDERED))


@pytest.mark.parametrize("table", sorted(RENDERED))
def test_a_committed_table_re_renders_byte_for_byte_from_its_json(table):
    md = RESULTS / table
    if not md.is_file():
        pytest.skip(f"{table} is not committed yet")
    assert RENDERED[table](json.loads(md.with_suffix(".json").read_text())) == md.read_text()


def _smoke(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", module, "--smoke", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout * TIMEOUT_SCALE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _unchanged_results():
    """The committed results, as they were: a smoke never writes there."""
    return {p: p.stat().st_mtime_ns for p in RESULTS.rglob("*") if p.is_file()}


@pytest.mark.smoke
def test_cub100_strong_smoke_runs_every_row_on_a_few_species(tmp_path, cub100):
    if not KERAS_WEIGHTS.is_file():
        pytest.skip(f"the paper's student's Keras weights are not at {KERAS_WEIGHTS}")
    before = _unchanged_results()
    data = cub_subset(cub100, tmp_path, 30)  # the ImageNet MobileNet-0.25 holds out 14 train species, batches 16 of the rest
    # Each student alone and a distilled row of each of the three banks (one a normalisation and set of training
    # images), with the held-out epoch choice (all 22 rows take minutes; tests/test_cars196_benchmark.py runs every row
    # of the same machinery on the cars).
    rows = ["mobilenet_v2/alone", "mobilenet_v2/relative_scaled", "mobilenet025_imagenet/alone",
            "mobilenet025_imagenet/relative_scaled", "mobilenet025/alone", "mobilenet025/absolute"]
    _smoke("benchmarks.cub100_strong", "--seeds", "0", "--data", str(data), "--output", str(tmp_path / "strong"), "--rows", *rows)
    result = json.loads((tmp_path / "strong_smoke" / "cub100_strong.json").read_text())
    assert [f"{r['config']['name'].rsplit('/', 1)[0]}" for r in result["rows"]] == rows
    assert sorted(result["banks"]) == ["lite0_48_v1.bank", "lite0_48_v1_keras.bank", "lite0_48_v1_keras_val14.bank"]
    assert result["command"].startswith("python -m benchmarks.cub100_strong --smoke")
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_cars196_resize_smoke_scores_every_mode(tmp_path):
    if not (SHARED / "data" / "cars196").is_dir():
        pytest.skip("the Cars-196 folders are not in ../shared/data")
    _smoke("benchmarks.tuning.cars196_resize", "--out", str(tmp_path / "resize.json"))
    result = json.loads((tmp_path / "resize.json").read_text())
    assert [m["resize"] for m in result["modes"]] == ["crop", "squash", "pad"] and result["smoke"] is True


@pytest.mark.smoke
def test_cars196_teacher_choice_smoke_scores_every_candidate(tmp_path):
    if not (SHARED / "data" / "cars196").is_dir():
        pytest.skip("the Cars-196 folders are not in ../shared/data")
    _smoke("benchmarks.tuning.cars196_teacher_choice", "--output", str(tmp_path))
    result = json.loads((tmp_path / "cars196_teacher_choice.json").read_text())
    assert [c["backbone"] for c in result["candidates"]] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.smoke
def test_int8_cpu_paths_smoke_quantizes_and_compares(tmp_path, cub100):
    paths = ["native"] if shutil.which("qemu-x86_64") is None else []  # the emulated paths need qemu-user
    _smoke("benchmarks.parity.int8_cpu_paths", "--out", str(tmp_path / "int8"), *(["--paths", *paths] if paths else []))
    result = json.loads((tmp_path / "int8.json").read_text())
    assert {r["variant"] for r in result["rows"]} == {"default", "U8S8"} and result["test_images"] == 32
    assert (tmp_path / "int8.md").read_text().startswith("# INT8 on every x86 kernel path")


@pytest.mark.smoke
@pytest.mark.parametrize("mode", [[], ["--tune"]], ids=["table", "tune"])
def test_asymmetric_smoke_scores_student_queries_on_its_tiny_demos_teacher_gallery(tmp_path, cub100, mode):
    before = _unchanged_results()
    _smoke("benchmarks.asymmetric", *mode, "--data", str(cub100), "--out", str(tmp_path / "asym"))
    result = json.loads((tmp_path / "asym.json").read_text())
    assert result["command"].startswith("python -m benchmarks.asymmetric --smoke")
    if mode:  # every trial config scored on the held-out species, best and last weights
        assert result["split"] == "validation" and len(result["trials"]) == len(list((REPO / "configs" / "cub100" /
                                                                                       "asymmetric" / "trials").glob("*.yaml")))
        assert all(0 <= t[w]["asym_recall@1"] <= 1 for t in result["trials"] for w in ("best", "last"))
    else:  # the projected rows score against the teacher's gallery (fp32 and INT8); the relation-only one is refused
        rows = {r["row"]: r["runs"] for r in result["rows"]}
        assert list(rows) == ["asymmetric_contrastive", "absolute", "relative"]
        assert all("int8_asym_recall@1" in rows[r][0] and rows[r][0]["pairing"] for r in ("asymmetric_contrastive", "absolute"))
        assert "512-d" in rows["relative"][0]["refused"] and "1280-d" in rows["relative"][0]["refused"]
    assert (tmp_path / "asym.md").read_text().startswith("# One gallery, two networks")
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_label_free_smoke_distils_on_photos_without_labels_from_its_tiny_demo(tmp_path, cub100):
    before = _unchanged_results()
    _smoke("benchmarks.label_free", "--data", str(cub100), "--out", str(tmp_path / "label_free"))
    result = json.loads((tmp_path / "label_free.json").read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == ["train_photos", "test_gallery", "labelled_by_agreement"]
    assert rows["test_gallery"]["transductive"] and not rows["train_photos"]["transductive"]
    assert rows["train_photos"]["photos"] == rows["test_gallery"]["photos"] == 64  # the tiny demo's 8 species x 8 images
    assert "knn_agreement@10" in rows["train_photos"]["runs"][0]["validation_curve"][0]
    assert set(result["demo"]) == {"student", "distilled", "teacher"}
    assert (tmp_path / "label_free.md").read_text().startswith("# Label-free distillation on birds")
    assert _unchanged_results() == before
