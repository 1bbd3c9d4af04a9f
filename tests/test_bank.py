"""The teacher bank: keyed by what determines it, written atomically, filled resumably, and a run
that reads it reproduces the run that computes the teacher live on the same views; processes that
fill one bank at once take turns, and one killed mid-fill is resumed by the next."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CUB100, REPO, TIMEOUT_SCALE, tiny_overrides
from embdistill.cli import main
from embdistill.config import load_config
from embdistill.data.transforms import IMAGENET
from embdistill.engine.teacher import bank as bank_module
from embdistill.engine.teacher.bank import BankError, BankKey, TeacherBank, _holder_record, fill_bank, load_bank, save_bank
from embdistill.engine.teacher.frozen import FrozenTeacher
from embdistill.engine.train import run
from embdistill.engine.batches.views import ViewCrop, ViewDataset, to_input
from embdistill.data import ImageDataset, load_dataset
from embdistill.config import ModelConfig
from embdistill.models.embedder import create_embedder

STUDENT = REPO / "configs" / "cub100" / "mobilenet025.yaml"


def _key(**changes) -> BankKey:
    key = BankKey(teacher_sha256="a" * 64, teacher_precision="fp32", data="cub200:train:0123", images=6, view_seed=0,
                  views=2, crop_size=64, transform="Compose(RandomResizedCrop(size=(64, 64)))", decoded_size=None)
    return dataclasses.replace(key, **changes)


def test_a_bank_for_other_inputs_is_refused_naming_every_difference(tmp_path):
    path = tmp_path / "teacher.bank"
    save_bank(path, TeacherBank(_key(), torch.randn(2, 6, 8)))
    assert load_bank(path, _key()).embeddings.shape == (2, 6, 8)
    cases = {
        "teacher_sha256": _key(teacher_sha256="b" * 64),  # another teacher checkpoint
        "crop_size": _key(crop_size=128),  # another crop size
        "views": _key(views=3),  # another view set
        "view_seed": _key(view_seed=1),
        "data": _key(data="cub200:train:4567"),
    }
    for field, expected in cases.items():
        with pytest.raises(BankError, match=field) as err:
            load_bank(path, expected)
        assert str(path) in str(err.value)
    with pytest.raises(BankError, match="crop_size.*64.*128") as err:
        load_bank(path, _key(crop_size=128, views=4))
    assert "views" in str(err.value)


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(BankError, match="does not exist"):
        load_bank(tmp_path / "none.bank")
    torch.save({"something": 1}, tmp_path / "other.bank")
    with pytest.raises(BankError, match="not an embdistill bank"):
        load_bank(tmp_path / "other.bank")
    (tmp_path / "garbage.bank").write_bytes(b"\x00not a torch file")
    with pytest.raises(BankError, match="cannot be read"):
        load_bank(tmp_path / "garbage.bank")
    torch.save({"format": 1, "key": {}, "embeddings": torch.zeros(1)}, tmp_path / "old.bank")
    with pytest.raises(BankError, match=f"bank format 1; this version reads format {bank_module.FORMAT}.*refill"):
        load_bank(tmp_path / "old.bank")


def test_a_write_killed_midway_leaves_the_previous_bank(tmp_path, monkeypatch):
    path = tmp_path / "teacher.bank"
    old = TeacherBank(_key(), torch.zeros(2, 6, 8))
    save_bank(path, old)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a bank")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(bank_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_bank(path, TeacherBank(_key(), torch.ones(2, 6, 8)))
    monkeypatch.undo()
    assert torch.equal(load_bank(path, _key()).embeddings, old.embeddings)
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.bank"]  # no temporary file left behind


@pytest.fixture(scope="module")
def tiny_views(cub100) -> tuple[ViewDataset, FrozenTeacher]:
    items = load_dataset("cub200", cub100, "train").subset(list(range(12)))
    views = ViewDataset(ImageDataset(items), ViewCrop(32, 48, IMAGENET), seed=0)
    model = create_embedder(ModelConfig(backbone="mobilenet_v1", pretrained=False, dim=16, backbone_args={"width": 0.25}))
    return views, FrozenTeacher(model, (), IMAGENET)


def test_an_interrupted_fill_resumes_at_its_view_and_never_leaves_a_readable_half(tmp_path, tiny_views, monkeypatch):
    views, teacher = tiny_views
    key = _key(images=len(views), views=3, crop_size=48)
    path = tmp_path / "teacher.bank"
    calls = {"n": 0}
    forward = FrozenTeacher.embed

    def dies_in_view_2(self, images):
        calls["n"] += 1
        if views.view == 1:
            raise KeyboardInterrupt
        return forward(self, images)

    monkeypatch.setattr(FrozenTeacher, "embed", dies_in_view_2)
    with pytest.raises(KeyboardInterrupt):
        fill_bank(path, key, views, teacher, batch_size=5, progress=False)
    monkeypatch.undo()
    assert not path.exists()
    with pytest.raises(BankError, match="fill in progress"):
        load_bank(path, key)
    before = teacher.forward_passes
    bank = fill_bank(path, key, views, teacher, batch_size=5, progress=False)
    assert teacher.forward_passes - before == 2 * len(views)  # views 1 and 2 only: view 0 was kept
    assert not path.with_name(path.name + ".partial").exists()
    assert torch.equal(load_bank(path, key).embeddings, bank.embeddings)
    # Every stored view is the teacher's output on that view of that image.
    for view in range(3):
        views.set_view(view)
        images = to_input(torch.stack([views[i][1] for i in range(len(views))]), IMAGENET, torch.device("cpu"))
        torch.testing.assert_close(bank.embeddings[view], teacher.embed(images).embedding, rtol=1e-5, atol=1e-6)


def _tiny_bank(root: Path, num_views: int) -> tuple[BankKey, ViewDataset, FrozenTeacher]:
    """The same small bank in every process: 12 real images, 48-px teacher crops, a seeded untrained teacher."""
    items = load_dataset("cub200", root, "train").subset(list(range(12)))
    views = ViewDataset(ImageDataset(items), ViewCrop(32, 48, IMAGENET), seed=0)
    torch.manual_seed(0)
    model = create_embedder(ModelConfig(backbone="mobilenet_v1", pretrained=False, dim=16, backbone_args={"width": 0.25}))
    return _key(images=len(items), views=num_views, crop_size=48), views, FrozenTeacher(model, (), IMAGENET)


def _fill_in_child(bank: str, num_views: str, log_dir: str, pause_in_view: str) -> None:
    """One process's fill of the tiny bank (see :func:`_start_fill`).

    Every image its teacher embeds is counted in ``log_dir/embedded``; at the first batch of
    view ``pause_in_view`` it writes ``log_dir/paused.PID`` and waits, holding the lock, for
    ``log_dir/go``. The bank it returns goes to ``log_dir/result.PID.pt``.
    """
    log = Path(log_dir)
    torch.set_num_threads(1)
    key, views, teacher = _tiny_bank(CUB100, int(num_views))
    forward, paused = FrozenTeacher.embed, []

    def counted(self, images):
        if views.view == int(pause_in_view) and not paused:
            paused.append(True)
            (log / f"paused.{os.getpid()}").touch()
            for _ in range(3000):  # at most 5 minutes, so that a test gone wrong fails instead of hanging
                if (log / "go").exists():
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"{log / 'go'} never appeared")
        with open(log / "embedded", "a") as counter:
            counter.write(f"{len(images)}\n")
        return forward(self, images)

    FrozenTeacher.embed = counted
    bank = fill_bank(bank, key, views, teacher, batch_size=5, progress=False)
    torch.save(bank.embeddings, log / f"result.{os.getpid()}.pt")


def _start_fill(log_dir: Path, bank: Path, num_views: int, pause_in_view: int, name: str) -> subprocess.Popen:
    """A real process running :func:`_fill_in_child`; its stdout and stderr go to ``log_dir/NAME.log``."""
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from test_bank import _fill_in_child; "
            "_fill_in_child(*sys.argv[1:])")
    with open(log_dir / f"{name}.log", "w") as out:
        return subprocess.Popen([sys.executable, "-c", code, str(bank), str(num_views), str(log_dir), str(pause_in_view)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def _wait_until(condition: Callable[[], bool], procs: list[subprocess.Popen], logs: Path, what: str) -> None:
    """Poll for ``condition``. A child that exits first fails the test; the deadline only keeps a broken lock from hanging it."""
    deadline = time.monotonic() + 300 * TIMEOUT_SCALE
    while not condition():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            pytest.fail(f"never saw {what}; the children said:\n" + "\n".join(p.read_text() for p in logs.glob("*.log")))
        time.sleep(0.05)


def _embedded(log_dir: Path) -> int:
    """Images the teacher embedded, over every child process."""
    return sum(int(line) for line in (log_dir / "embedded").read_text().split())


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen]]:
    """The test's child processes; any still running at the end are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_fills_started_together_run_the_teacher_once_and_the_others_wait_and_read_it(tmp_path, cub100, children):
    bank = tmp_path / "banks" / "teacher.bank"
    children += [_start_fill(tmp_path, bank, 2, pause_in_view=0, name=f"fill{i}") for i in range(2)]
    # Whichever takes the lock pauses in its first batch until the other says that it waits.
    _wait_until(lambda: any(tmp_path.glob("paused.*")), children, tmp_path, "a fill in its first batch")
    holder = int(next(tmp_path.glob("paused.*")).suffix[1:])
    waiter = next(i for i, p in enumerate(children) if p.pid != holder)
    log = tmp_path / f"fill{waiter}.log"
    _wait_until(lambda: "waiting" in log.read_text(), children, tmp_path, "the second fill waiting")
    (tmp_path / "go").touch()
    for p in children:
        assert p.wait(timeout=300 * TIMEOUT_SCALE) == 0, "\n".join(f.read_text() for f in tmp_path.glob("*.log"))

    message = next(line for line in log.read_text().splitlines() if "waiting" in line)
    assert message == (f"teacher bank {bank}: another process (pid {holder}) holds {bank}.lock and is filling it; "
                       "waiting for it to finish, then reading the bank")
    assert _embedded(tmp_path) == 2 * 12  # each (image, view) once, by the holder; the waiter never ran its teacher
    assert [p.name for p in tmp_path.glob("paused.*")] == [f"paused.{holder}"]
    assert [p.name for p in bank.parent.iterdir()] == ["teacher.bank"]  # no .partial, no .lock left behind
    key, views, teacher = _tiny_bank(cub100, 2)
    expected = fill_bank(tmp_path / "reference" / "teacher.bank", key, views, teacher, batch_size=5, progress=False)
    torch.testing.assert_close(load_bank(bank, key).embeddings, expected.embeddings, rtol=1e-5, atol=1e-6)
    for p in children:  # the waiter returned the holder's bank, read from disk
        assert torch.equal(torch.load(tmp_path / f"result.{p.pid}.pt"), load_bank(bank, key).embeddings)


def test_a_waiter_arriving_before_the_holder_writes_its_pid_waits_for_the_pid(tmp_path):
    # The holder writes "pid host" just after taking the lock; a waiter between the two must not report "no pid".
    lock = tmp_path / "teacher.bank.lock"
    lock.write_bytes(b"")
    writer = threading.Timer(0.2, lambda: lock.write_bytes(b"4242 somehost\n"))
    writer.start()
    fd = os.open(lock, os.O_RDONLY)
    try:
        assert _holder_record(fd) == b"4242 somehost\n"
        writer.join()
        lock.write_bytes(b"")
        assert _holder_record(fd, patience=0.05) == b""  # a holder that never writes: the waiter still goes on
    finally:
        os.close(fd)


def test_a_fill_killed_while_holding_the_lock_is_resumed_by_the_next_process(tmp_path, cub100, children):
    bank = tmp_path / "banks" / "teacher.bank"
    partial, lock = bank.with_name("teacher.bank.partial"), bank.with_name("teacher.bank.lock")
    killed = _start_fill(tmp_path, bank, 3, pause_in_view=1, name="killed")
    children.append(killed)
    _wait_until(lambda: (tmp_path / f"paused.{killed.pid}").exists(), children, tmp_path, "the fill in view 1")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=300 * TIMEOUT_SCALE) == -signal.SIGKILL
    assert not bank.exists() and sorted(p.name for p in partial.iterdir()) == ["key.json", "view_0.pt"]
    assert lock.read_text().split()[0] == str(killed.pid)  # its lock file stays; the OS dropped its lock
    view_0 = torch.load(partial / "view_0.pt")

    resumed = _start_fill(tmp_path, bank, 3, pause_in_view=-1, name="resumed")
    children.append(resumed)
    assert resumed.wait(timeout=300 * TIMEOUT_SCALE) == 0, (tmp_path / "resumed.log").read_text()
    assert "waiting" not in (tmp_path / "resumed.log").read_text()
    assert _embedded(tmp_path) == 3 * 12  # view 0 by the killed process, views 1 and 2 by the next: each once
    key, views, teacher = _tiny_bank(cub100, 3)
    filled = load_bank(bank, key).embeddings
    assert torch.equal(filled[0], view_0)
    expected = fill_bank(tmp_path / "reference" / "teacher.bank", key, views, teacher, batch_size=5, progress=False)
    torch.testing.assert_close(filled, expected.embeddings, rtol=1e-5, atol=1e-6)  # as if never interrupted
    assert [p.name for p in bank.parent.iterdir()] == ["teacher.bank"]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, cub100) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config(STUDENT, tiny_overrides(out, cub100, "teacher", **{"model.backbone_args": "{width: 0.5}", "model.dim": 64}))
    return run(cfg, progress=False).checkpoint


def test_the_teacher_is_keyed_by_its_weights_not_its_file(tmp_path, teacher_ckpt):
    # Rewriting a checkpoint with the same weights (another stored training config, a re-save) keeps its
    # banks valid; other weights or another model config do not.
    fingerprint = bank_module.teacher_fingerprint(teacher_ckpt)
    payload = torch.load(teacher_ckpt, weights_only=False)
    payload["rewritten"] = "by a later embdistill"
    resaved = tmp_path / "resaved.pt"
    torch.save(payload, resaved)
    assert resaved.read_bytes() != teacher_ckpt.read_bytes()
    assert bank_module.teacher_fingerprint(resaved) == fingerprint
    assert bank_module.teacher_fingerprint(teacher_ckpt.parent) == fingerprint  # a run directory means its last.pt
    name = next(k for k, v in payload["model_state"].items() if v.is_floating_point())
    payload["model_state"][name] = payload["model_state"][name] + 1e-3
    torch.save(payload, tmp_path / "other_weights.pt")
    assert bank_module.teacher_fingerprint(tmp_path / "other_weights.pt") != fingerprint
    payload = torch.load(teacher_ckpt, weights_only=False)
    payload["model_config"] = {**payload["model_config"], "pooling": "max"}
    torch.save(payload, tmp_path / "other_pooling.pt")
    assert bank_module.teacher_fingerprint(tmp_path / "other_pooling.pt") != fingerprint


def _distill_overrides(tmp_path: Path, cub100: Path, teacher: Path, name: str, *extra: str, **values) -> list[str]:
    values = {"train.epochs": 3, "distill.cache_views": 2, **values}
    return tiny_overrides(tmp_path, cub100, name, **values) + [
        f"distill.teacher={teacher}", "distill.terms=[{name: relative}, {name: absolute}]", *extra]


def _summary(result) -> dict:
    return yaml.safe_load((result.run_dir / "summary.yaml").read_text())


@pytest.mark.slow
def test_a_banked_run_reproduces_the_live_teacher_run_and_seeds_share_the_bank(tmp_path, cub100, teacher_ckpt, capsys):
    bank = tmp_path / "banks" / "teacher.bank"
    live = run(load_config(STUDENT, _distill_overrides(tmp_path, cub100, teacher_ckpt, "live")), progress=False)
    # `embdistill bank` fills it without training; the run then only reads it.
    assert main(["bank", "-c", str(STUDENT), "--no-progress",
                 *_distill_overrides(tmp_path, cub100, teacher_ckpt, "bank", f"distill.bank={bank}")]) == 0
    assert bank.is_file()
    banked = run(load_config(STUDENT, _distill_overrides(tmp_path, cub100, teacher_ckpt, "banked", f"distill.bank={bank}")),
                 progress=False)
    # The bank holds what the live teacher computed, image by image and view by view. (It embeds batches
    # of eval.batch_size, the live teacher the images each training batch lacks: other shapes, whose CPU
    # kernels may round differently, so "the same" is to 1e-5, not bit for bit.)
    (cached,) = torch.load(live.run_dir / "teacher_cache.pt", weights_only=False).values()
    seen = cached["filled"]
    assert seen.any() and seen.shape == load_bank(bank).embeddings.shape[:2]
    torch.testing.assert_close(cached["store"]["embedding"][seen], load_bank(bank).embeddings[seen], rtol=1e-5, atol=1e-6)
    # So training on it is the live run's training, up to what those roundings become after 6 Adam steps
    # (bit for bit on the CPU this was written on; 1e-4 leaves room for other kernels), and the retrieval
    # metrics agree up to one of the 239 held-out queries flipping on a near-tie.
    a, b = (torch.load(r.checkpoint, weights_only=False)["model_state"] for r in (live, banked))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")
    assert banked.metrics == pytest.approx(live.metrics, abs=1 / 239)
    assert _summary(live)["teacher_forward_images"] > 0
    assert _summary(banked)["teacher_forward_images"] == 0 and _summary(banked)["teacher_bank"] == str(bank)
    # Another run seed: the same fixed views (distill.view_seed), so the same bank serves it.
    other = run(load_config(STUDENT, _distill_overrides(tmp_path, cub100, teacher_ckpt, "seed1", f"distill.bank={bank}", seed=1)),
                progress=False)
    assert _summary(other)["teacher_forward_images"] == 0


@pytest.mark.slow
def test_a_run_with_a_stale_bank_stops_before_training_and_says_what_differs(tmp_path, cub100, teacher_ckpt, capsys):
    bank = tmp_path / "teacher.bank"
    assert main(["bank", "-c", str(STUDENT), "--no-progress",
                 *_distill_overrides(tmp_path, cub100, teacher_ckpt, "bank", f"distill.bank={bank}")]) == 0
    capsys.readouterr()
    cases = {
        "crop_size": ["distill.teacher_image_size=80"],  # another size
        "views": ["distill.cache_views=3"],  # another view set
        "view_seed": ["distill.view_seed=7"],
    }
    for field, extra in cases.items():
        code = main(["distill", "-c", str(STUDENT), "--no-progress",
                     *_distill_overrides(tmp_path, cub100, teacher_ckpt, f"stale_{field}", f"distill.bank={bank}", *extra)])
        err = capsys.readouterr().err
        assert code == 2 and field in err and str(bank) in err and "Traceback" not in err, err
        assert not (tmp_path / f"stale_{field}" / "last.pt").exists()
    # Another teacher: same architecture, other weights.
    payload = torch.load(teacher_ckpt, weights_only=False)
    payload["model_state"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in payload["model_state"].items()}
    other = tmp_path / "other_teacher.pt"
    torch.save(payload, other)
    code = main(["distill", "-c", str(STUDENT), "--no-progress",
                 *_distill_overrides(tmp_path, cub100, other, "stale_teacher", f"distill.bank={bank}")])
    err = capsys.readouterr().err
    assert code == 2 and "teacher_sha256" in err, err


def test_a_view_is_one_crop_rendered_at_each_networks_size(cub100):
    """The teacher's crop is exactly torchvision's RandomResizedCrop + flip; the student's is the same box."""
    from embdistill.data.transforms import build_transform
    from embdistill.engine.batches.views import crop_seed

    items = load_dataset("cub200", cub100, "train").subset(list(range(6)))
    views = ViewDataset(ImageDataset(items), ViewCrop(40, 120, IMAGENET), seed=3)
    reference = build_transform(True, 120, IMAGENET)
    for view in (0, 1):
        views.set_view(view)
        for i in range(len(views)):
            student, teacher, label, index, v = views[i]
            student, teacher = (to_input(x[None], IMAGENET, torch.device("cpu"))[0] for x in (student, teacher))
            torch.manual_seed(crop_seed(3, i, view))
            assert torch.equal(teacher, reference(views.images.load_image(i)))
            assert student.shape == (3, 40, 40) and (index, v, label) == (i, view, int(items.labels[i]))
            # The same box: shrinking the teacher's crop gives (almost) the student's pixels.
            shrunk = torch.nn.functional.interpolate(teacher[None], size=(40, 40), mode="bilinear", antialias=True)[0]
            assert (shrunk - student).abs().mean() < 0.05
    views.teacher_images = False
    assert views[0][1].numel() == 0
