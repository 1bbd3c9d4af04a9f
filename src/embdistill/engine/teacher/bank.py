"""The teacher bank: a frozen teacher's embeddings of every training view, computed once, kept on disk.

A distillation run spends most of its time running the teacher unless the teacher's
outputs are stored. The in-run :class:`~embdistill.engine.teacher.frozen.TeacherCache` lives
and dies with one run; the bank outlives it. ``embdistill bank`` (or the first run
that names ``distill.bank``) runs the teacher over ``V`` seeded augmented views of
every training image and writes one file; every later run of any student, method or
seed reads it and never runs the teacher.

A bank is only valid for the exact inputs that produced it, so its file carries a
:class:`BankKey` (teacher weights hash, training images and labels, view seed and
count, crop size, transform, decoded-image size, teacher precision). A run whose key
differs is refused with the fields that differ. Writes are atomic and the fill is
resumable view by view: a half-written bank is never read. Processes that need one
missing bank at once (parallel rows, seeds) take turns under a lock beside it: the
first fills it, the others wait and read it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from embdistill.atomic import write_atomic
from embdistill.checkpoints import checkpoint_fingerprint
from embdistill.config import ConfigError, ExperimentConfig
from embdistill.data.datasets import ImageList
from embdistill.data.transforms import Normalization
from embdistill.engine.batches.loaders import view_size
from embdistill.engine.batches.views import ViewDataset, to_input
from embdistill.engine.teacher.frozen import FrozenTeacher, TeacherCache
from embdistill.models.embedder import Embedder

try:
    import fcntl
except ImportError:  # Windows: fills of one bank there are not serialised
    fcntl = None

FORMAT = 2  # 2: the teacher is keyed by its weights and model config, no longer by the checkpoint file's bytes


class BankError(ValueError):
    """A bank file is unreadable, half-written, or was made for other inputs than this run's."""


@dataclass(frozen=True)
class BankKey:
    """Everything that determines a teacher's output for (image, view); two runs share a bank iff equal."""

    teacher_sha256: str  # the teacher's weights, model config and input normalisation (teacher_fingerprint)
    teacher_precision: str
    data: str  # dataset name and a hash of the ordered (path, label) list
    images: int
    view_seed: int
    views: int
    crop_size: int  # the teacher's crop, distill.teacher_image_size or data.image_size
    transform: str  # the teacher's view crop, ViewCrop.teacher_signature() (size, scale, ratio, flip, normalisation)
    decoded_size: int | None  # side of the decoded-image cache the crops are cut from (None: the files)

    def differences(self, other: BankKey) -> list[str]:
        """Human-readable ``field: bank has X, this run needs Y`` for every field that differs."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return [f"{k}: the bank has {mine[k]!r}, this run needs {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


teacher_fingerprint = checkpoint_fingerprint  # the one fingerprint, shared with galleries and exports


def data_fingerprint(items: ImageList, root: str | Path | None = None) -> str:
    """``name:sha256`` over the ordered (path relative to ``root``, label) list: moving the dataset keeps it valid."""
    digest = hashlib.sha256()
    base = Path(root).resolve() if root is not None else None
    for path, label in zip(items.paths, items.labels):
        path = Path(path).resolve()
        shown = path.relative_to(base) if base is not None and path.is_relative_to(base) else path
        digest.update(f"{shown.as_posix()}\t{int(label)}\n".encode())
    return f"{items.name}:{digest.hexdigest()[:16]}"


def bank_key(
    teacher_checkpoint: str | Path,
    teacher_precision: str,
    items: ImageList,
    data_root: str | Path | None,
    views: ViewDataset,
    num_views: int,
    crop_size: int,
    decoded_size: int | None,
) -> BankKey:
    return BankKey(
        teacher_sha256=teacher_fingerprint(teacher_checkpoint),
        teacher_precision=teacher_precision,
        data=data_fingerprint(items, data_root),
        images=len(items),
        view_seed=views.seed,
        views=num_views,
        crop_size=crop_size,
        transform=views.crop.teacher_signature(),
        decoded_size=decoded_size,
    )


@dataclass
class TeacherBank:
    """``embeddings[v, i]``: the teacher's embedding of image ``i`` under view ``v``."""

    key: BankKey
    embeddings: Tensor  # (views, images, dim), fp32

    def as_cache(self) -> TeacherCache:
        """A completely filled in-run cache, so the trainer's teacher never runs."""
        cache = TeacherCache(self.key.images, self.key.views)
        cache.store["embedding"] = self.embeddings
        cache.filled[:] = True
        return cache


def save_bank(path: str | Path, bank: TeacherBank) -> None:
    """Write to a temporary file in the same folder, fsync, rename (``atomic.write_atomic``): a killed write
    leaves no bank."""
    payload = {"format": FORMAT, "key": dataclasses.asdict(bank.key), "embeddings": bank.embeddings}
    write_atomic(path, lambda f: torch.save(payload, f))


def load_bank(path: str | Path, expected: BankKey | None = None) -> TeacherBank:
    """Read a bank; with ``expected``, refuse it unless it was made for exactly these inputs."""
    path = Path(path)
    if not path.is_file():
        partial = _partial_dir(path)
        hint = f" ({partial} holds a fill in progress; `embdistill bank` completes it)" if partial.is_dir() else ""
        raise BankError(f"teacher bank {path} does not exist{hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BankError(f"teacher bank {path} cannot be read ({type(err).__name__}: {err})") from err
    if isinstance(payload, dict) and isinstance(payload.get("format"), int) and payload["format"] != FORMAT:
        raise BankError(f"teacher bank {path} was written in bank format {payload['format']}; this version reads "
                        f"format {FORMAT}. Delete it (or point distill.bank at another file) to refill it")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "key" not in payload:
        raise BankError(f"teacher bank {path} is not an embdistill bank of format {FORMAT}")
    try:
        key = BankKey(**payload["key"])
    except TypeError as err:
        raise BankError(f"teacher bank {path} has a key this version does not know: {err}") from err
    embeddings = payload["embeddings"]
    if tuple(embeddings.shape[:2]) != (key.views, key.images):
        raise BankError(f"teacher bank {path} holds {tuple(embeddings.shape)} embeddings, its key says "
                        f"{key.views} views x {key.images} images")
    if expected is not None and key != expected:
        raise BankError(f"teacher bank {path} was made for other inputs than this run's: "
                        + "; ".join(key.differences(expected))
                        + ". Point distill.bank at another file, or delete this one to refill it")
    return TeacherBank(key, embeddings)


def _partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _lock_file(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


@contextmanager
def bank_lock(path: str | Path) -> Iterator[None]:
    """Hold ``PATH.lock`` exclusively, so one process fills the bank at ``path`` and the others wait.

    ``fcntl.flock``, because the kernel drops it when its holder dies, SIGKILL included: a
    killed fill never leaves a stale lock behind, as an ``O_EXCL`` lock file would (whose
    staleness could only be guessed from a pid). Unlike ``fcntl.lockf`` (POSIX record locks)
    it belongs to the open file, not the process, so no other ``close()`` of the file in this
    process can drop it, and it means the same on Linux and macOS. A waiter says once, on
    stderr, which bank it waits for and the holder's pid (written into the lock file).

    The holder removes the lock file before it lets go, so none is left beside a finished
    bank; a waiter that then wins the lock on the removed file queues again on the new one.
    Not reentrant: a second ``bank_lock`` on one path in one process waits forever.
    """
    path = Path(path)
    lock = _lock_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    told = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    print(_waiting_message(path, lock, _holder_record(fd)), file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _names(lock, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed this file on letting go: queue on the one that replaced it
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # before letting go: a waiter must never win a file no longer at `lock`
        os.close(fd)


def _names(lock: Path, fd: int) -> bool:
    """Whether ``lock`` still names the open file ``fd``."""
    try:
        here, held = os.stat(lock), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _holder_record(fd: int, patience: float = 2.0) -> bytes:
    """The holder's ``pid host`` line, waiting up to ``patience`` seconds for it.

    The holder writes it just after taking the lock, so a waiter arriving in between would
    otherwise read an empty file and could not say whom it waits for.
    """
    deadline = time.monotonic() + patience
    while not (recorded := os.pread(fd, 256, 0)).endswith(b"\n") and time.monotonic() < deadline:
        time.sleep(0.01)
    return recorded


def _waiting_message(path: Path, lock: Path, recorded: bytes) -> str:
    pid, _, host = recorded.decode(errors="replace").strip().partition(" ")
    holder = "no pid recorded yet"
    if pid:
        holder = f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
    return (f"teacher bank {path}: another process ({holder}) holds {lock} and is filling it; "
            f"waiting for it to finish, then reading the bank")


def fill_bank(
    path: str | Path,
    key: BankKey,
    views: ViewDataset,
    teacher: FrozenTeacher,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> TeacherBank:
    """Run the teacher once over every (image, view) and write the bank, unless another process just did.

    Fills of one path take turns under :func:`bank_lock`; one that finds the bank written
    when its turn comes reads it instead (refused as usual if made for other inputs). Each
    finished view is saved atomically in ``PATH.partial/``, so a killed fill (SIGKILL too:
    the OS drops its lock) is resumed at the view it was in by the next; the bank file
    itself appears only when complete. ``say`` hears that the teacher is about to run.
    """
    path = Path(path)
    partial = _partial_dir(path)
    with bank_lock(path):  # the only place .partial is created, written or removed
        if path.is_file():
            bank = load_bank(path, key)
            shutil.rmtree(partial, ignore_errors=True)  # views left by a fill killed just after writing the bank
            return bank
        if _read_json(partial / "key.json") != dataclasses.asdict(key):
            shutil.rmtree(partial, ignore_errors=True)  # none, half made, or a fill for other inputs: useless here
            partial.mkdir(parents=True)
            write_atomic(partial / "key.json", json.dumps(dataclasses.asdict(key), indent=1).encode())
        if say is not None:
            done = sum((partial / f"view_{v}.pt").is_file() for v in range(key.views))
            say(f"filling the teacher bank {path}: {key.views} view(s) x {key.images} images"
                + (f", resuming after {done} view(s) in {partial}" if done else ""))
        device = next(teacher.model.parameters()).device
        rendered, views.teacher_images = views.teacher_images, True
        try:
            per_view = _fill_views(partial, key, views, teacher, device, batch_size, num_workers, progress)
        finally:
            views.teacher_images = rendered
        bank = TeacherBank(key, torch.stack(per_view))
        save_bank(path, bank)
        shutil.rmtree(partial)
    return bank


def _fill_views(partial: Path, key: BankKey, views: ViewDataset, teacher: FrozenTeacher, device: torch.device,
                batch_size: int, num_workers: int, progress: bool) -> list[Tensor]:
    per_view = []
    for view in range(key.views):
        done = partial / f"view_{view}.pt"
        if done.is_file():
            per_view.append(torch.load(done, weights_only=True))
            continue
        views.set_view(view)
        loader = DataLoader(views, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        chunks = []
        for _, teacher_images, _, indices, batch_views in tqdm(loader, desc=f"teacher bank view {view + 1}/{key.views}",
                                                                 leave=False, disable=not progress):
            chunks.append(teacher.embed(to_input(teacher_images, views.crop.normalization, device)).embedding.cpu())
        embeddings = torch.cat(chunks)
        write_atomic(done, lambda f: torch.save(embeddings, f))
        per_view.append(embeddings)
    return per_view


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def bank_for_run(
    cfg: ExperimentConfig,
    teacher: Embedder,
    views: ViewDataset,
    items: ImageList,
    decoded_size: int | None,
    input_normalization: Normalization,
    *,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = False,
) -> TeacherBank:
    """The bank ``distill.bank`` names for this run's teacher and views: read it, or fill it first.

    Under data parallelism rank 0 fills it and the others wait at ``barrier``; other runs
    filling the same bank at once wait in :func:`fill_bank` for the first.
    """
    d = cfg.distill
    if not d.cache_teacher:
        raise ConfigError("distill.bank holds fixed views: it needs distill.cache_teacher=true")
    key = bank_key(d.teacher, d.teacher_precision, items, cfg.data.root, views, d.cache_views, view_size(cfg), decoded_size)
    path = Path(d.bank)
    if is_main and not path.is_file():
        frozen = FrozenTeacher(teacher, (), input_normalization, d.teacher_precision)
        fill_bank(path, key, views, frozen, cfg.eval.batch_size, cfg.data.num_workers, progress,
                  say=lambda message: print(f"[{cfg.name}] {message}", flush=True))
    barrier()
    return load_bank(path, key)


def fill_bank_for_config(cfg: ExperimentConfig, progress: bool = True) -> tuple[Path, TeacherBank]:
    """``embdistill bank``: make sure the bank ``distill.bank`` names exists for this config, without training."""
    from embdistill.engine.batches.loaders import image_cache, load_splits, train_loader
    from embdistill.engine.compute.device import resolve_device
    from embdistill.engine.teacher.frozen import load_teacher
    from embdistill.models.embedder import create_embedder

    d = cfg.distill
    if d is None or not d.teacher or not d.bank:
        raise ConfigError("embdistill bank needs distill.teacher=CHECKPOINT and distill.bank=PATH")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    splits = load_splits(cfg.data)
    normalization = create_embedder(dataclasses.replace(cfg.model, pretrained=False)).normalization  # the student's inputs
    images = image_cache(cfg.data, splits.train, view_size(cfg))
    _, views, _ = train_loader(cfg, splits.train, normalization, cache=images)
    teacher = load_teacher(cfg, resolve_device(cfg.device))
    bank = bank_for_run(cfg, teacher, views, splits.train, images.size if images else None, normalization, progress=progress)
    return Path(d.bank), bank
