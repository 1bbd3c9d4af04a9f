"""Every benchmark table re-renders from its committed JSON, and every benchmark's ``--smoke`` runs, in a temporary folder.

The renders are cheap (no model runs). The smokes run the scripts as ``python -m benchmarks.<name> --smoke`` and are
marked ``smoke`` (``pytest -m "not smoke"`` leaves them out); each writes only under ``tmp_path`` (and its runs in a
temporary folder of its own), and the committed results stay as they were. Three smokes have their own modules, with
closer checks: ``cars196`` (test_cars196_benchmark.py), ``gpu_paper_student`` (test_gpu_script.py) and
``input_pipeline`` (test_input_pipeline.py). ``asymmetric``, ``label_free``, ``known_gallery`` and ``speed.bank_speed``, built on
``make demo``'s runs or the tuning's teacher and bank, make a tiny demo of their own (benchmarks/common/smoke.py);
``tuning.strong_tuning`` makes its own teacher and bank.
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
    "int8_parity_bias_correction.md": _with_rows("benchmarks.parity.int8_parity"),
    "int8_teacher_space_tuning.md": _rendered_by("benchmarks.parity.int8_teacher_space"),
    "asymmetric_cub100.md": _rendered_by("benchmarks.asymmetric"),
    "asymmetric_cub100_tuning.md": _rendered_by("benchmarks.asymmetric", "tuning_markdown"),
    "label_free_cub100.md": _rendered_by("benchmarks.label_free"),
    "known_gallery_cub100.md": _rendered_by("benchmarks.known_gallery"),
    "known_gallery_cub100_tuning.md": _rendered_by("benchmarks.known_gallery"),
    "known_gallery_cars196.md": _rendered_by("benchmarks.known_gallery"),
    "known_gallery_cub100_epoch_choice.md": _rendered_by("benchmarks.known_gallery"),
    "known_gallery_cars196_tuning.md": _rendered_by("benchmarks.known_gallery"),
    "gallery_density_cars196.md": _rendered_by("benchmarks.gallery_density"),
    "gallery_density_cars196_tuning.md": _rendered_by("benchmarks.gallery_density"),
}
# committed Markdown that no script renders from a JSON, and why (benchmarks/README.md says the same)
NOT_RENDERED = {
    "cub100.md": "benchmarks/cub100.py is retired (its last version: commit d196be9)",
    "export_speed.md": "export_speed writes no JSON",
    "export_speed_int8.md": "export_speed writes no JSON",
    "cub100_tuning.md": "hand-written", "cub100_strong_tuning.md": "hand-written", "cars196_tuning.md": "hand-written",
    "known_gallery_cars196_imagenet_teacher.md": "written by known_gallery's first cars version (ImageNet-features "
    "teacher, all 98 training models), before the table's teacher and tuning classes changed (2026-12-06)",
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
    before = _unchanged_results()
    _smoke("benchmarks.tuning.cars196_resize", "--out", str(tmp_path / "resize.json"))
    result = json.loads((tmp_path / "resize.json").read_text())
    assert [m["resize"] for m in result["modes"]] == ["crop", "squash", "pad"] and result["smoke"] is True
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_cars196_teacher_choice_smoke_scores_every_candidate(tmp_path):
    if not (SHARED / "data" / "cars196").is_dir():
        pytest.skip("the Cars-196 folders are not in ../shared/data")
    before = _unchanged_results()
    _smoke("benchmarks.tuning.cars196_teacher_choice", "--output", str(tmp_path))
    result = json.loads((tmp_path / "cars196_teacher_choice.json").read_text())
    assert [c["backbone"] for c in result["candidates"]] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_int8_cpu_paths_smoke_quantizes_and_compares(tmp_path, cub100):
    before = _unchanged_results()
    paths = ["native"] if shutil.which("qemu-x86_64") is None else []  # the emulated paths need qemu-user
    _smoke("benchmarks.parity.int8_cpu_paths", "--out", str(tmp_path / "int8"), *(["--paths", *paths] if paths else []))
    result = json.loads((tmp_path / "int8.json").read_text())
    assert {r["variant"] for r in result["rows"]} == {"default", "U8S8"} and result["test_images"] == 32
    assert result["test_classes"] == 4 and all(0 < r["fp32_recall@1"] <= 100 for r in result["rows"])  # 8 images a species
    assert (tmp_path / "int8.md").read_text().startswith("# INT8 on every x86 kernel path")
    assert _unchanged_results() == before


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
        assert list(rows) == ["asymmetric_contrastive_16ep_by_asym", "asymmetric_contrastive", "absolute", "relative"]
        assert all("int8_asym_recall@1" in rows[r][0] and rows[r][0]["pairing"] for r in list(rows)[:3])
        assert "512-d" in rows["relative"][0]["refused"] and "1280-d" in rows["relative"][0]["refused"]
    assert (tmp_path / "asym.md").read_text().startswith("# One gallery, two networks")
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_label_free_smoke_distils_on_photos_without_labels_from_its_tiny_demo(tmp_path, cub100):
    before = _unchanged_results()
    _smoke("benchmarks.label_free", "--data", str(cub100), "--out", str(tmp_path / "label_free"))
    result = json.loads((tmp_path / "label_free.json").read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == ["train_photos", "test_gallery", "labelled_by_agreement", "labelled_relaxed"]
    assert rows["labelled_relaxed"]["runs"][0]["epoch"] == 1 and not rows["labelled_relaxed"]["transductive"]
    assert all(r["command"].startswith("python -m benchmarks.label_free --smoke") for r in rows.values())
    assert rows["test_gallery"]["transductive"] and not rows["train_photos"]["transductive"]
    assert rows["train_photos"]["photos"] == rows["test_gallery"]["photos"] == 64  # the tiny demo's 8 species x 8 images
    assert "knn_agreement@10" in rows["train_photos"]["runs"][0]["validation_curve"][0]
    assert set(result["demo"]) == {"student", "distilled", "teacher"}
    assert (tmp_path / "label_free.md").read_text().startswith("# Label-free distillation on birds")
    assert _unchanged_results() == before


@pytest.mark.smoke
@pytest.mark.parametrize("mode", [[], ["--tune"]], ids=["table", "tune"])
def test_known_gallery_smoke_distils_on_the_gallery_and_queries_it_with_other_photos(tmp_path, cub100, mode):
    before = _unchanged_results()
    _smoke("benchmarks.known_gallery", *mode, "--data", str(cub100), "--out", str(tmp_path / "known"))
    result = json.loads((tmp_path / "known.json").read_text())
    assert result["split"] == ("train" if mode else "test") and result["command"].startswith("python -m benchmarks.known_gallery --smoke")
    assert (result["gallery"], result["queries"], result["linked"]) == (32, 32, 32)  # every other photo of 8 species x 8
    trials = ["asymmetric_b256", "asymmetric_t005", "mobilenet025"] if mode else []  # --tune: the trials after the rows
    assert [r["row"] for r in result["rows"]] == ["asymmetric", "asymmetric_160", "mobilenet025_32ep", *trials]
    for row in result["rows"]:
        (run,) = row["runs"]
        assert run["distilled_on_gallery"] == 32 and not run["transductive"]  # the run's photos are the gallery, no query
        assert 0 <= run["own_recall@1"] <= 1 and 0 <= run["asym_recall@1"] <= 1
        assert ("int8_asym_recall@1" in run) == (not mode)
        # train.keep_epochs: the one epoch, scored from its own file, is the chosen one scored from best.pt
        (point,) = run["epoch_curve"]
        assert point["epoch"] == run["epoch"] == 1 and point["own_recall@1"] == run["own_recall@1"]
        assert point["knn_agreement@10"] == run["selected_agreement"]
    markdown = (tmp_path / "known.md").read_text()
    assert markdown.startswith("# Known gallery: the student distils on the collection")
    assert "## Does knn_agreement@10 choose the best epoch?" in markdown
    assert _unchanged_results() == before


def _cars_known_gallery(tmp_path, *args: str) -> tuple[dict, str]:
    """``benchmarks.known_gallery --dataset cars196 --smoke`` with ``args``: its result and its table."""
    cars = SHARED / "data" / "cars196"
    if not cars.is_dir():
        pytest.skip(f"the Cars-196 folders are not at {cars}")
    before = _unchanged_results()
    _smoke("benchmarks.known_gallery", "--dataset", "cars196", *args, "--out", str(tmp_path / "known"))
    assert _unchanged_results() == before
    return json.loads((tmp_path / "known.json").read_text()), (tmp_path / "known.md").read_text()


@pytest.mark.smoke
def test_known_gallery_smoke_on_cars_trains_its_teacher_and_links_one_photo_of_each_model(tmp_path):
    result, markdown = _cars_known_gallery(tmp_path, "--rows", "mobilenet025_32ep")
    assert result["dataset"] == "cars196" and result["split"] == "test"
    assert (result["gallery"], result["queries"], result["linked"]) == (98, 98, 98)  # 2 photos of each test model
    assert result["teacher"].endswith("runs/teacher")  # configs/cars196/known_gallery/teacher.yaml, run by the script
    ((run,),) = [row["runs"] for row in result["rows"]]
    assert run["distilled_on_gallery"] == 98 and not run["transductive"]
    assert 0 <= run["int8_asym_recall@1"] <= 1
    assert markdown.startswith("# Known gallery: the student distils on the collection it will search (cars196)")
    assert "the 98 test models, unseen in training: in each model every other photo" in markdown


@pytest.mark.smoke
def test_known_gallery_smoke_on_cars_tunes_beside_the_photos_the_teacher_trained_on(tmp_path):
    result, markdown = _cars_known_gallery(tmp_path, "--tune", "--rows", "mobilenet025_training")
    assert result["split"] == "train" and (result["gallery"], result["queries"]) == (24, 24)  # the 24 held out
    ((row,),) = [result["rows"]]
    assert row["training_photos"] == 74 * 2  # 2 photos of each model the teacher trained on, none of the 24
    (run,) = row["runs"]
    assert run["distilled_on_gallery"] == 24 and not run["transductive"]
    assert "also distils on the 148 photos of the training models the teacher trained on" in markdown


@pytest.mark.smoke
def test_known_gallery_ceiling_distils_on_the_queries_too_and_is_marked_transductive(tmp_path):
    result, markdown = _cars_known_gallery(tmp_path, "--rows", "mobilenet025_32ep_queries")
    ((row,),) = [result["rows"]]
    assert row["query_photos"] == 98  # the other photo of each test model, linked beside the gallery's
    (run,) = row["runs"]
    assert run["transductive"] and run["distilled_on_gallery"] == 98
    assert "the scores are not transductive (but the ceilings', below)" in markdown
    assert "- mobilenet025_32ep_queries is a ceiling, not a recipe: it also distils on the 98 query photos" in markdown


def test_a_ceiling_runs_only_when_named_and_only_on_the_test_classes():
    from benchmarks.common.collection import COLLECTIONS
    from benchmarks.known_gallery import main

    for collection in COLLECTIONS.values():  # a ceiling's name never shadows a row's or a trial's
        assert collection.ceilings and not set(collection.ceilings) & {*collection.rows, *collection.trials}
    with pytest.raises(SystemExit):  # argparse: not a trial or a row of the tuning
        main(["--dataset", "cars196", "--tune", "--rows", "mobilenet025_32ep_queries", "--runs", "/nonexistent"])


@pytest.mark.smoke
def test_int8_teacher_space_smoke_scores_fp32_and_two_int8_settings_against_the_teachers_gallery(tmp_path, cub100):
    from benchmarks.parity.int8_teacher_space import markdown

    before = _unchanged_results()
    _smoke("benchmarks.parity.int8_teacher_space", "--data", str(cub100), "--out", str(tmp_path / "ts"))
    result = json.loads((tmp_path / "ts.json").read_text())
    assert [r["setting"] for r in result["rows"]] == ["fp32", "default", "no bias correction"]
    assert (result["gallery"], result["queries"]) == (32, 32)  # every other photo of the tiny demo's 8 train species
    assert all(0 <= r["recall@1"] <= 100 and -1 <= r["cosine_min"] <= r["cosine_mean"] + 1e-6 <= 1 + 2e-6
               for r in result["rows"])  # float32 sums: on a barely trained student the min can pass the mean by 1e-8
    assert result["rows"][0]["cosine_mean"] == 1.0 and result["rows"][1]["export_seconds"] > 0
    assert (tmp_path / "ts.md").read_text() == markdown(result)
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_eval_scale_smoke_times_every_task_once_on_a_small_synthetic_split(tmp_path):
    from benchmarks.speed.eval_scale import SMOKE_ITEMS, TASKS, markdown

    before = _unchanged_results()
    _smoke("benchmarks.speed.eval_scale", "--out", str(tmp_path))
    result = json.loads((tmp_path / "eval_scale.json").read_text())
    assert result["n_items"] == SMOKE_ITEMS and result["runs"] == 1 and result["nmi_niter"] > 0
    assert all(len(result["seconds_all"][task]) == 1 for task in TASKS)
    assert set(result["peak_rss_mb"]) == {*TASKS, "idle", "nmi"}
    # ours and pytorch-metric-learning agree on the same split, and every value is a fraction
    assert all(abs(d) < 1e-6 for d in result["metrics"]["abs_diff_vs_pml"].values())
    assert all(0 < v <= 1 for v in result["metrics"]["ours"].values()) and 0 < result["metrics"]["nmi"] <= 1
    assert (tmp_path / "eval_scale.md").read_text() == markdown(result)
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_export_speed_smoke_exports_times_and_quantizes_every_model(tmp_path, cub100):
    before = _unchanged_results()
    _smoke("benchmarks.speed.export_speed", "--data", str(cub100), "--out", str(tmp_path / "export_speed.md"))
    text = (tmp_path / "export_speed.md").read_text()
    runtimes, int8 = text.split("## Runtimes")[1].split("## INT8")
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in runtimes.splitlines()
                              if line.startswith("| ") and not line.startswith("| model"))}
    assert list(rows) == ["MobileNet-0.25 (student)", "EfficientNet-Lite0"] and {r[1] for r in rows.values()} == {"64"}
    assert all(float(r[-1]) < 1e-4 for r in rows.values())  # ONNX Runtime embeds as PyTorch does
    int8_rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in int8.splitlines()
                                   if line.startswith("| ") and not line.startswith("| model"))}
    assert list(int8_rows) == ["teacher fp32", "student fp32", "student INT8", "student INT8, U8S8"]
    assert all(float(int8_rows[name][2]) < float(int8_rows["student fp32"][2]) / 2 for name in list(int8_rows)[2:])
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_bank_speed_smoke_trains_alone_banked_and_live_on_its_tiny_demo(tmp_path, cub100):
    from benchmarks.speed.bank_speed import markdown

    before = _unchanged_results()
    _smoke("benchmarks.speed.bank_speed", "--data", str(cub100), "--out", str(tmp_path))
    result = json.loads((tmp_path / "bank_speed.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["alone", "banked", "live"]
    # the banked run reads the tiny demo's bank, so its teacher never runs; the live one runs it
    assert rows["alone"]["teacher_forward_images"] == rows["banked"]["teacher_forward_images"] == 0
    assert rows["live"]["teacher_forward_images"] > 0
    assert all(0 <= r["recall@1"] <= 1 for r in rows.values())
    assert result["command"].startswith("python -m benchmarks.speed.bank_speed --smoke")
    assert (tmp_path / "bank_speed.md").read_text() == markdown(result) and "Smoke run" in markdown(result)
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_int8_parity_smoke_compares_two_settings_with_fp32(tmp_path, cub100):
    before = _unchanged_results()
    _smoke("benchmarks.parity.int8_parity", "--out", str(tmp_path / "int8"))
    result = json.loads((tmp_path / "int8.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["default", "U8S8"]
    assert (result["test_images"], result["test_classes"]) == (32, 4) and result["checkpoint"].startswith("imagenet")
    for r in result["rows"]:
        assert 0 < r["fp32_recall@1"] <= 100 and 0 < r["int8_recall@1"] <= 100 and r["mean_cosine"] > 0.9
        assert r["int8_mb"] < r["fp32_mb"] / 2
    assert (tmp_path / "int8.md").read_text().startswith("# INT8 against fp32: retrieval")
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_keras_mobilenet_check_smoke_scores_the_converted_weights_at_both_sizes(tmp_path, cub100):
    if not KERAS_WEIGHTS.is_file():
        pytest.skip(f"the Keras MobileNet-0.25 weights are not at {KERAS_WEIGHTS}")
    before = _unchanged_results()
    _smoke("benchmarks.parity.keras_mobilenet_check", "--data", str(cub100), "--out", str(tmp_path / "keras.json"))
    result = json.loads((tmp_path / "keras.json").read_text())
    assert [r["image_size"] for r in result["rows"]] == [224, 96] and result["weights"] == KERAS_WEIGHTS.name
    # 32 images of 4 species: far above chance (about 0.23) unless the conversion is broken
    assert all(r["images"] == 32 and 40 <= r["recall@1"] <= 100 and r["keras_recall@1"] is None for r in result["rows"])
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_teacher_choice_smoke_scores_every_candidate(tmp_path, cub100):
    from benchmarks.common.teacher_choice import CANDIDATES

    before = _unchanged_results()
    _smoke("benchmarks.tuning.teacher_choice", "--out", str(tmp_path / "choice.json"))
    result = json.loads((tmp_path / "choice.json").read_text())
    assert [c["backbone"] for c in result["candidates"]] == [backbone for backbone, _ in CANDIDATES]
    assert all(c["split"] == "validation" and c["images"] == 8 and 0 <= c["recall@1"] <= 1 for c in result["candidates"])
    assert _unchanged_results() == before


@pytest.mark.smoke
@pytest.mark.parametrize("split", ["validation", "test"])
def test_resolution_ceiling_smoke_scores_every_size(tmp_path, cub100, split):
    from benchmarks.tuning.resolution_ceiling import CANDIDATES

    before = _unchanged_results()
    _smoke("benchmarks.tuning.resolution_ceiling", *(["--test"] if split == "test" else []), "--out", str(tmp_path / "ceiling.json"))
    result = json.loads((tmp_path / "ceiling.json").read_text())
    assert [(c["backbone"], c["image_size"]) for c in result["candidates"]] == CANDIDATES
    # 2 held-out train species, or the 4 test species, of 4 images each
    assert all(c["split"] == split and c["images"] == (8 if split == "validation" else 16) and 0 <= c["recall@1"] <= 1
               for c in result["candidates"])
    assert _unchanged_results() == before


@pytest.mark.smoke
def test_strong_tuning_smoke_runs_a_distilled_trial_from_its_own_teacher_and_bank(tmp_path, cub100):
    from benchmarks.tuning.strong_tuning import SMOKE_TRIAL

    before = _unchanged_results()
    _smoke("benchmarks.tuning.strong_tuning", "--data", str(cub100), "--out", str(tmp_path))
    result = json.loads((tmp_path / "cub100_strong_tuning.json").read_text())
    trial = result["trials"][SMOKE_TRIAL]
    assert list(result["trials"]) == [SMOKE_TRIAL] and result["command"].startswith("python -m benchmarks.tuning.strong_tuning --smoke")
    assert [p["epoch"] for p in trial["curve"]] == [1] and trial["best_epochs"] == 1 and 0 <= trial["recall@1"] <= 1
    assert trial["teacher_forward_images"] == 0  # read from the bank the smoke filled first
    config = trial["config"]  # the trial's own recipe, its runs, teacher and bank under the smoke's folder
    assert config["train"]["backbone_lr_mult"] == 1.0 and config["distill"]["terms"][0]["weight"] == 10.0
    assert all("strong_tuning_smoke_" in p for p in (config["output_dir"], config["distill"]["teacher"], config["distill"]["bank"]))
    assert (tmp_path / "strong_tuning_curves.png").stat().st_size > 0
    assert _unchanged_results() == before
