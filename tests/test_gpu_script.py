"""python -m benchmarks.gpu_paper_student: the GPU run's plan is the paper's budget, and ``--smoke`` runs all of it on the CPU.

The smoke run is a real one: a teacher scored, a bank filled, three student processes
side by side and two torchrun (gloo) processes, on 4 + 4 species of the CUB subset.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TIMEOUT_SCALE

from benchmarks import gpu_paper_student as bench
KERAS_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"  # ../shared/weights/README.md


def _args(tmp_path: Path, *extra: str):
    return bench.build_parser().parse_args(["--data", str(tmp_path / "cub"), "--out", str(tmp_path / "out"), *extra])


def test_the_gpu_plan_is_the_papers_budget_for_its_phone_student(tmp_path):
    weights = tmp_path / "mobilenet_2_5_224_tf_no_top.h5"
    rows = bench.plan(_args(tmp_path, "--weights", str(weights)))
    assert [r.key for r, _ in rows] == ["alone", "absolute", "relative"]
    for _, cfg in rows:
        m, t = cfg.model, cfg.train
        assert (m.backbone, m.backbone_args, m.pretrained, m.freeze_batchnorm, m.dim) == (
            "mobilenet_v1", {"width": 0.25}, str(weights), True, 512)
        assert cfg.data.image_size == 224 and cfg.device == "cuda"
        assert t.epochs * t.batches_per_epoch >= 20_000
        assert (t.classes_per_batch, t.images_per_class) == (4, 8)
        assert (t.lr, t.backbone_lr_mult, t.schedule) == (2.5e-5, 1.0, "constant")  # one Adam rate for every layer
        assert (t.precision, t.channels_last) == ("bf16", True)
        assert cfg.seed == 0 and cfg.eval.every_epochs == 0
    alone, absolute, relative = (cfg for _, cfg in rows)
    assert alone.distill is None
    for cfg, term in ((absolute, "absolute"), (relative, "relative")):
        d = cfg.distill
        assert [x.name for x in d.terms] == [term]
        assert d.bank == str(tmp_path / "out" / "banks" / "lite0_224_v8.bank")
        assert d.teacher == str(tmp_path / "out" / "teacher_lite0_224" / "last.pt")
        assert d.teacher_image_size == 224 and d.cache_views == cfg.train.epochs == 8
        # Views seeded alike (the alone row's by its seed): all three rows see the same crops in the same order.
        assert d.view_seed == alone.seed


def test_bad_arguments_stop_with_one_line_naming_them(tmp_path):
    with pytest.raises(SystemExit, match=r"--data .*cub: expected a CUB root with images.txt"):
        bench.main(["--data", str(tmp_path / "cub")])
    (tmp_path / "cub").mkdir()
    (tmp_path / "cub" / "images.txt").write_text("")
    with pytest.raises(SystemExit, match=r"--weights: expected the Keras MobileNet-0.25 ImageNet file"):
        bench.main(["--data", str(tmp_path / "cub")])
    with pytest.raises(SystemExit, match=r"--weights .*missing.h5: no such file"):
        bench.main(["--data", str(tmp_path / "cub"), "--weights", str(tmp_path / "missing.h5"), "--smoke"])


def test_merged_overrides_keep_the_last_value_of_each_key():
    assert bench.merged(["a=1", "b.c=2", "a=3", "d={x: 1}"]) == ["a=3", "b.c=2", "d={x: 1}"]


@pytest.mark.slow
def test_smoke_runs_the_teacher_the_bank_three_parallel_rows_and_torchrun(tmp_path, cub100):
    out, results = tmp_path / "out", tmp_path / "results" / "gpu.json"
    weights = ["--weights", str(KERAS_WEIGHTS)] if KERAS_WEIGHTS.is_file() else []  # the GPU run's network, if here
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_paper_student", "--smoke", "--data", str(cub100), "--out", str(out),
                           "--results", str(results), *weights], cwd=REPO, capture_output=True, text=True, timeout=900 * TIMEOUT_SCALE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(results.read_text())
    assert (out / "gpu_paper_student.json").read_text() == results.read_text()
    assert result["smoke"] and result["machine"]["torch"] == torch.__version__
    # The machine record says which GPU the child saw (none: conftest hides CUDA unless EMBDISTILL_TEST_CUDA=1).
    assert result["machine"]["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)

    assert [r["method"] for r in result["rows"]] == ["alone", "absolute", "relative"]
    bank = out / "banks" / "lite0_48_v1.bank"
    assert bank.is_file() and result["bank"]["views"] == 1 and result["bank"]["fill_seconds"] > 0
    for row in result["rows"]:
        assert "error" not in row and row["command"].startswith("python -m benchmarks.gpu_paper_student --row ")
        (run,) = row["runs"]
        assert all(math.isfinite(run[k]) and 0 <= run[k] <= 1 for k in bench.KEYS), run
        assert run["steps"] == 3 and run["images_per_s"] > 0 and run["wall_seconds"] > 0
        assert (out / row["method"] / "summary.yaml").is_file()
        assert row["config"]["model"]["freeze_batchnorm"] is bool(weights)  # frozen: ImageNet's statistics, if loaded
        if row["method"] != "alone":  # filled once before the rows started: they read it, the teacher never ran
            assert Path(row["config"]["distill"]["bank"]).name == bank.name
            assert run["teacher_forward_images"] == 0
    assert result["rows"][0]["ran"]["command"].startswith("python -m benchmarks.gpu_paper_student --smoke")

    tr = result["torchrun"]
    assert tr["ok"] and tr["returncode"] == 0, tr.get("error")
    assert (tr["backend"], tr["processes"], tr["steps"]) == ("gloo", 2, 2)
    assert all(math.isfinite(tr[k]) for k in bench.KEYS)
    assert tr["command"].startswith("python -m torch.distributed.run --standalone --nproc_per_node 2 ")
    assert "torchrun, 2 processes, gloo: ok" in done.stdout
