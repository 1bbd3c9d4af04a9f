"""Reliability on real CUB images: kill and resume, signals, atomic checkpoints, bad data, bad teachers, NaNs.

Every run is tiny (64 px, a few steps, 4 held-out classes). The resumed-equals-
uninterrupted comparisons run on the CPU with a fixed seed and 2 threads (conftest pins
them, in this process and in the children), where a run is deterministic: weights must
agree to rtol 1e-5 / atol 1e-7 and Recall@K / MAP@R to 1e-6 (any real difference in
retrieval metrics is >= 1/239). A child that is killed or signalled pauses at a known
step first (:func:`_train_pausing_in_child`), so no test depends on the machine's speed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TIMEOUT_SCALE, tiny_overrides
from embdistill.cli import main
from embdistill.config import load_config, to_dict
from embdistill.checkpoints import check_teacher, load_checkpoint, remove_partial_writes, save_checkpoint
from embdistill.engine.train.signals import Interrupted
from embdistill.engine.persist.runlog import read_log
from embdistill.engine.train import run
from embdistill.config import ModelConfig
from embdistill.models.embedder import create_embedder

STUDENT = REPO / "configs" / "cub100" / "mobilenet025.yaml"
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision")
RESUMABLE = {"train.checkpoint_every": 1, "train.epochs": 2, "train.batches_per_epoch": 3}
pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- helpers


def _layout(tmp_path: Path, cub100: Path, classes: int | None = None) -> Path:
    """A copy of the CUB metadata (optionally only the first ``classes`` classes); images are symlinks."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for folder in (cub100 / "images").iterdir():
        (root / "images" / folder.name).symlink_to(folder)
    class_lines = (cub100 / "classes.txt").read_text().splitlines()
    keep = {line.split()[0] for line in class_lines[:classes]} if classes else None
    labels = [line for line in (cub100 / "image_class_labels.txt").read_text().splitlines()
              if keep is None or line.split()[1] in keep]
    ids = {line.split()[0] for line in labels}
    images = [line for line in (cub100 / "images.txt").read_text().splitlines() if line.split()[0] in ids]
    (root / "classes.txt").write_text("\n".join(line for line in class_lines if keep is None or line.split()[0] in keep) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    return root


def _edit(path: Path, change) -> None:
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "embdistill", *_train_args(*args)]


def _train_args(*args: str) -> list[str]:
    return ["train", *args, "--no-progress"]


def _train_pausing_in_child(pause_dir: str, step: str, *argv: str) -> None:
    """``embdistill train ARGV`` that, having logged step ``step`` (before that step's checkpoint and its
    check for a signal), writes ``pause_dir/paused`` and waits for ``pause_dir/go``; see :func:`_start`."""
    from embdistill.engine.persist.runlog import RunLog

    write, folder = RunLog.write, Path(pause_dir)

    def pausing(self, kind, **values):
        write(self, kind, **values)
        if kind == "step" and values["step"] == int(step):
            (folder / "paused").touch()
            for _ in range(3000):  # at most 5 minutes, so that a test gone wrong fails instead of hanging
                if (folder / "go").exists():
                    return
                time.sleep(0.1)
            raise RuntimeError(f"{folder / 'go'} never appeared")

    RunLog.write = pausing
    sys.exit(main(list(argv)))


def _start(args: list[str], tmp_path: Path, pause_after_step: int) -> subprocess.Popen:
    """``embdistill ARGS`` in a child that pauses after logging step ``pause_after_step`` (wait for
    ``tmp_path/paused``), so that a test signals it at a known point however fast the machine is."""
    log = (tmp_path / f"proc{len(list(tmp_path.glob('proc*')))}.err").open("w")
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); "
            "from test_reliability import _train_pausing_in_child; _train_pausing_in_child(*sys.argv[1:])")
    return subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(pause_after_step), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True)


def _wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll for ``condition`` while the child runs; the deadline only keeps a broken child from hanging the test."""
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never saw {what} (child rc {proc.poll()})")
        time.sleep(0.02)


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_log(run_dir) if r["kind"] == "step"]


def _summary(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "summary.yaml").read_text())


def _assert_same_run(a: Path, b: Path) -> None:
    """Same final metrics, weights and logged losses (tolerances in the module docstring)."""
    sa, sb = _summary(a), _summary(b)
    torch.testing.assert_close(torch.tensor([sa[k] for k in METRICS], dtype=torch.float64),
                               torch.tensor([sb[k] for k in METRICS], dtype=torch.float64), rtol=0, atol=1e-6)
    wa, wb = (load_checkpoint(d)["model_state"] for d in (a, b))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-7, msg=lambda m: f"{key}: {m}")
    la, lb = ([r["loss"] for r in read_log(d) if r["kind"] == "step"] for d in (a, b))
    assert la == pytest.approx(lb, rel=1e-5)


def _fake_teacher(path: Path, image_size: int = 64, **changes) -> Path:
    """An untrained MobileNetV1-0.25 teacher checkpoint (cheap; the tests only need its shape)."""
    config = ModelConfig(backbone="mobilenet_v1", pretrained=False, dim=64, backbone_args={"width": 0.25})
    model = create_embedder(config)
    payload = {"model_config": to_dict(config), "model_state": model.state_dict(), "image_size": image_size,
               "normalization": (model.normalization.mean, model.normalization.std)}
    save_checkpoint(path, {**payload, **changes})
    return path


def _interrupt_at(monkeypatch, calls: int, signals: int = 1) -> list[int]:
    """Make the ``calls``-th loss evaluation send SIGINT to this process ``signals`` times."""
    from embdistill.losses import objective as objective_module

    original = objective_module.Objective.forward
    count = [0]

    def forward(self, *args, **kwargs):
        count[0] += 1
        if count[0] == calls:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(objective_module.Objective, "forward", forward)
    return count


# --------------------------------------------------------------------------- interruptions


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cub100) -> Path:
    """The uninterrupted run: 2 epochs x 3 steps, a checkpoint after every step."""
    out = tmp_path_factory.mktemp("reference")
    return run(load_config(STUDENT, tiny_overrides(out, cub100, "reference", **RESUMABLE)), progress=False).run_dir


def test_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path, cub100, reference):
    run_dir = tmp_path / "killed"
    # Killed after logging step 3 and before checkpointing it: mid-epoch, one logged step not checkpointed.
    proc = _start(_train_args("-c", str(STUDENT), *tiny_overrides(tmp_path, cub100, "killed", **RESUMABLE)), tmp_path,
                  pause_after_step=3)
    _wait_until(lambda: (tmp_path / "paused").exists(), proc, "step 3 logged")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "summary.yaml").exists()
    payload = load_checkpoint(run_dir)
    assert payload["step"] == 2 and _steps(run_dir) == [1, 2, 3]
    assert payload["resume"]["sampler"] == {"epoch": 0, "batch_index": 2, "seed": 0}  # mid-epoch

    resumed = subprocess.run(_train_cmd("--resume", str(run_dir)), cwd=REPO, capture_output=True, text=True,
                             timeout=600 * TIMEOUT_SCALE)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {run_dir / 'last.pt'} after step 2" in resumed.stdout
    assert _steps(run_dir) == [1, 2, 3, 4, 5, 6]  # no gap, no duplicate
    assert [r["kind"] for r in read_log(run_dir)].count("eval") == 1
    _assert_same_run(run_dir, reference)


def test_same_seed_gives_the_same_metrics_and_weights(tmp_path, cub100, reference):
    again = run(load_config(STUDENT, tiny_overrides(tmp_path, cub100, "again", **RESUMABLE)), progress=False)
    assert {k: _summary(again.run_dir)[k] for k in METRICS} == {k: _summary(reference)[k] for k in METRICS}
    a, b = load_checkpoint(again.run_dir)["model_state"], load_checkpoint(reference)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_checkpoints_says_how_to_resume_and_resumes(tmp_path, cub100, capsys):
    data = _layout(tmp_path, cub100, classes=8)
    overrides = tiny_overrides(tmp_path, cub100, "term", **{"data.root": data, "train.batches_per_epoch": 3})
    run_dir = tmp_path / "term"
    # SIGTERM arrives during step 1 (paused after logging it): the run finishes the step, checkpoints and stops.
    proc = _start(_train_args("-c", str(STUDENT), *overrides), tmp_path, pause_after_step=1)
    _wait_until(lambda: (tmp_path / "paused").exists(), proc, "step 1 logged")
    proc.send_signal(signal.SIGTERM)
    err_file = tmp_path / "proc0.err"
    _wait_until(lambda: "SIGTERM: stopping after this step" in err_file.read_text(), proc, "the SIGTERM handler")
    (tmp_path / "go").touch()
    assert proc.wait(timeout=120 * TIMEOUT_SCALE) == 143
    err = err_file.read_text()
    assert f"stopped by SIGTERM after step 1 (epoch 1, batch 1); checkpoint saved to {run_dir / 'last.pt'}. " \
           f"Resume with: embdistill train --resume {run_dir}" in err
    payload = load_checkpoint(run_dir)
    assert payload["step"] == 1 and payload["resume"]["sampler"]["batch_index"] == 1  # mid-epoch, no checkpoint_every
    assert _steps(run_dir) == [1]

    # A resume must not change what is computed, and needs a run directory.
    assert main(["train", "--resume", str(run_dir), "train.lr=0.5"]) == 2
    assert "train.lr: 0.003 -> 0.5" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "has no config.yaml" in capsys.readouterr().err

    # run(cfg, resume=True) is the same as `embdistill train --resume`.
    result = run(load_config(STUDENT, overrides), progress=False, resume=True)
    assert _steps(run_dir) == [1, 2, 3]
    assert set(METRICS) <= set(_summary(result.run_dir))


def test_sigint_stops_after_the_step_and_a_second_sigint_aborts(tmp_path, cub100, monkeypatch, capsys):
    data = _layout(tmp_path, cub100, classes=8)
    handler = signal.getsignal(signal.SIGINT)
    _interrupt_at(monkeypatch, calls=1)
    assert main(["train", "-c", str(STUDENT), *tiny_overrides(tmp_path, cub100, "int", **{"data.root": data}), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT after step 1 (epoch 1, batch 1)" in err
    assert f"embdistill train --resume {tmp_path / 'int'}" in err
    assert load_checkpoint(tmp_path / "int")["step"] == 1

    _interrupt_at(monkeypatch, calls=1, signals=2)
    assert main(["train", "-c", str(STUDENT), *tiny_overrides(tmp_path, cub100, "abort", **{"data.root": data}), "--no-progress"]) == 130
    assert "aborted" in capsys.readouterr().err
    assert not (tmp_path / "abort" / "last.pt").exists() and not (tmp_path / "abort" / "metrics.jsonl").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers are put back


def test_distill_resume_restores_teacher_cache_and_unlabelled_batches(tmp_path, cub100, monkeypatch):
    """Semi-supervised distillation with a one-view teacher cache, interrupted mid-epoch 2."""
    data = _layout(tmp_path, cub100, classes=12)  # 8 train classes (4 labelled, 4 unlabelled), 4 held out
    teacher = _fake_teacher(tmp_path / "teacher.pt")

    def config(name):
        return load_config(STUDENT, tiny_overrides(tmp_path, cub100, name, **{"data.root": data, "train.epochs": 2}) + [
            f"distill.teacher={teacher}", "distill.terms=[{name: relative}]", "distill.cache_views=1",
            "distill.semi_supervised={hide_label_fraction: 0.5, unlabelled_per_batch: 4}"])

    reference = run(config("reference"), progress=False)
    count = _interrupt_at(monkeypatch, calls=3)  # step 3 = epoch 2, batch 1
    with pytest.raises(Interrupted) as stop:
        run(config("resumed"), progress=False)
    assert stop.value.exit_code == 130 and "embdistill distill --resume" in str(stop.value)
    run_dir = tmp_path / "resumed"
    assert (run_dir / "teacher_cache.pt").is_file() and not (run_dir / "summary.yaml").exists()
    count[0] = -100  # disarm
    resumed = run(config("resumed"), progress=False, resume=True)
    assert _steps(run_dir) == [1, 2, 3, 4]
    _assert_same_run(run_dir, reference.run_dir)
    # The cache came back: the teacher ran exactly as often as in the uninterrupted run.
    assert _summary(run_dir)["teacher_forward_images"] == _summary(reference.run_dir)["teacher_forward_images"] < 4 * (32 + 4)
    assert resumed.metrics == pytest.approx(reference.metrics, abs=1e-6)


def test_atomic_writes_get_an_ordinary_files_mode_without_touching_the_umask(tmp_path):
    # The mode comes from the umask as for open(); it is never read by setting it, which would race other threads.
    import concurrent.futures
    import stat

    from embdistill.atomic import write_atomic

    previous = os.umask(0o027)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # 8 writers at once, 4 to the same file
            list(pool.map(lambda i: write_atomic(tmp_path / f"f{i % 5}.bin", bytes([i]) * 1000), range(8)))
        assert os.umask(0o027) == 0o027  # no writer left it changed
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{i}.bin" for i in range(5)]  # no temporary file left
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640 and len(set(path.read_bytes())) == 1  # whole, one writer's


def test_a_checkpoint_write_killed_midway_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    script = f"""
import io, os, signal, torch
from embdistill import checkpoints as checkpoint
payload = {{"model_config": {{}}, "model_state": {{}}, "image_size": 64, "version": 1, "w": torch.arange(100_000.0)}}
checkpoint.save_checkpoint({str(path)!r}, payload)
real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
checkpoint.save_checkpoint({str(path)!r}, {{**payload, "version": 2}})
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120 * TIMEOUT_SCALE)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = list(tmp_path.glob(".last.pt.*.tmp"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < path.stat().st_size  # it died mid-write
    payload = load_checkpoint(path)
    assert payload["version"] == 1 and torch.equal(payload["w"], torch.arange(100_000.0))
    assert remove_partial_writes(tmp_path) == partial and not partial[0].exists()
    npz = tmp_path / ".test_embeddings.npz.k3x9.tmp"  # the cached test embeddings' write, killed the same way
    npz.write_bytes(b"half")
    assert remove_partial_writes(tmp_path) == [npz] and not npz.exists()

    # An exception inside the write (disk full, Ctrl-C): same, and the temporary file is gone.
    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"version": 3})
    assert load_checkpoint(path)["version"] == 1 and not list(tmp_path.glob(".last.pt.*.tmp"))


# --------------------------------------------------------------------------- bad data


def _train_main(tmp_path, cub100, data: Path, *extra: str, **values) -> int:
    overrides = tiny_overrides(tmp_path, cub100, "bad", **{"data.root": data, **values})
    return main(["train", "-c", str(STUDENT), *overrides, *extra, "--no-progress"])


def _break_images(root: Path, cub100: Path) -> tuple[Path, Path]:
    """A truncated JPEG and a text file named .jpg, in place of two images of the last (held-out) class."""
    broken = root / "images" / "broken"
    broken.mkdir()
    lines = (root / "images.txt").read_text().splitlines()
    source = cub100 / "images" / lines[-1].split(maxsplit=1)[1]
    truncated, not_an_image = broken / "truncated.jpg", broken / "notes.jpg"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    not_an_image.write_text("this is not a JPEG\n")
    lines[-1] = f"{lines[-1].split()[0]} broken/truncated.jpg"
    lines[-2] = f"{lines[-2].split()[0]} broken/notes.jpg"
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    return truncated, not_an_image


def test_corrupt_images_stop_the_run_or_are_skipped_and_listed(tmp_path, cub100, capsys):
    data = _layout(tmp_path, cub100, classes=8)
    truncated, not_an_image = _break_images(data, cub100)
    assert _train_main(tmp_path, cub100, data, **{"train.batches_per_epoch": 1}) == 2
    err = capsys.readouterr().err
    assert "cannot decode image" in err and str(data / "images" / "broken") in err
    assert "data.skip_bad_images=true" in err

    assert _train_main(tmp_path, cub100, data, **{"train.batches_per_epoch": 1, "data.skip_bad_images": "true"}) == 0
    out = capsys.readouterr().out
    listed = (tmp_path / "bad" / "skipped_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(str(p) for p in (not_an_image, truncated))
    assert _summary(tmp_path / "bad")["skipped_images"] == 2
    assert "skipped 2 unreadable image(s)" in out


@pytest.mark.parametrize("fault", ["missing image", "duplicate id", "unknown class", "empty test side", "single-image class"])
def test_bad_metadata_is_a_clear_error_from_train(tmp_path, cub100, capsys, fault):
    data = _layout(tmp_path, cub100)
    extra = {}
    if fault == "missing image":
        _edit(data / "images.txt", lambda lines: [*lines, "99999 001.Black_footed_Albatross/gone.jpg"])
        _edit(data / "image_class_labels.txt", lambda lines: [*lines, "99999 1"])
        expected = [str(data / "images" / "001.Black_footed_Albatross" / "gone.jpg"), "missing"]
    elif fault == "duplicate id":
        _edit(data / "images.txt", lambda lines: [*lines[:3], lines[1], *lines[3:]])
        expected = [f"{data / 'images.txt'}:4: duplicate id 2 (first on line 2)"]
    elif fault == "unknown class":
        _edit(data / "image_class_labels.txt", lambda lines: [*lines[:-1], f"{lines[-1].split()[0]} 999"])
        expected = [str(data / "image_class_labels.txt"), "class ids 999", str(data / "classes.txt")]
    elif fault == "empty test side":  # every class id <= 100: nothing left to test on
        ids = {line.split()[0]: str(i + 1) for i, line in enumerate((data / "classes.txt").read_text().splitlines())}
        _edit(data / "classes.txt", lambda lines: [f"{ids[l.split()[0]]} {l.split()[1]}" for l in lines])
        _edit(data / "image_class_labels.txt", lambda lines: [f"{l.split()[0]} {ids[l.split()[1]]}" for l in lines])
        extra = {"data.validation_classes": 0}
        expected = ["cub200/test: no images with class id > 100"]
    else:  # keep one image of the first class
        _edit(data / "image_class_labels.txt", lambda lines: [l for i, l in enumerate(lines) if l.split()[1] != "1" or i == 0])
        kept = {l.split()[0] for l in (data / "image_class_labels.txt").read_text().splitlines()}
        _edit(data / "images.txt", lambda lines: [l for l in lines if l.split()[0] in kept])
        expected = ["001.Black_footed_Albatross", "only 1 training image", "at least 2 per class"]
    assert _train_main(tmp_path, cub100, data, **extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("embdistill train: error: ")
    for text in expected:
        assert text in err


# --------------------------------------------------------------------------- bad teachers


def test_a_teacher_that_does_not_match_the_config_names_each_difference(tmp_path, cub100, capsys):
    data = _layout(tmp_path, cub100, classes=8)

    def distill(teacher: Path, *extra: str) -> str:
        overrides = tiny_overrides(tmp_path, cub100, "distilled", **{"data.root": data})
        code = main(["distill", "-c", str(STUDENT), *overrides, f"distill.teacher={teacher}",
                     "distill.terms=[{name: relative}]", *extra, "--no-progress"])
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"embdistill distill: error: teacher checkpoint {teacher} does not match the config")
        return err

    teacher = _fake_teacher(tmp_path / "teacher.pt", image_size=128)
    err = distill(teacher, "distill.teacher_backbone=resnet18", "distill.teacher_dim=128", "distill.strict_teacher=true")
    assert "architecture: distill.teacher_backbone=resnet18, the checkpoint is a mobilenet_v1" in err
    assert "embedding size: distill.teacher_dim=128, the checkpoint embeds in 64-d" in err
    assert "image size: the teacher was trained at 128 px, data.image_size is 64 px" in err
    odd = _fake_teacher(tmp_path / "odd.pt", normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert "normalisation: the checkpoint was trained on inputs normalised with mean (0.485, 0.456, 0.406)" in distill(odd)

    # Matching values pass; another image size is only a note unless strict.
    payload = load_checkpoint(teacher)
    model = create_embedder(ModelConfig(**{**payload["model_config"], "pretrained": False}))
    notes = check_teacher(payload, teacher, model, backbone="mobilenet_v1", dim=64, image_size=64)
    assert notes == ["image size: the teacher was trained at 128 px, data.image_size is 64 px"]
    assert check_teacher(payload, teacher, model, image_size=128, strict_image_size=True) == []


# --------------------------------------------------------------------------- numerical faults


def test_skipped_nan_steps_are_counted_in_the_summary(tmp_path, cub100, monkeypatch):
    from embdistill.losses import objective as objective_module

    original = objective_module.Objective.forward
    calls = [0]

    def first_is_nan(self, *args, **kwargs):
        parts = original(self, *args, **kwargs)
        calls[0] += 1
        return {k: v * float("nan") for k, v in parts.items()} if calls[0] == 1 else parts

    monkeypatch.setattr(objective_module.Objective, "forward", first_is_nan)
    data = _layout(tmp_path, cub100, classes=8)
    cfg = load_config(STUDENT, tiny_overrides(tmp_path, cub100, "nan", **{"data.root": data, "train.nan_policy": "skip"}))
    result = run(cfg, progress=False)
    assert _summary(result.run_dir)["skipped_steps"] == 1
    assert [r["kind"] for r in read_log(result.run_dir)] == ["skipped_step", "step", "eval"]
