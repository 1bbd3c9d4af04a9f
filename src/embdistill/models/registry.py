"""One registry of backbones by name, in the spirit of timm's ``create_model``."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from embdistill.models.backbone import Backbone

BackboneFn = Callable[..., Backbone]
_BACKBONES: dict[str, BackboneFn] = {}


def register_backbone(fn: BackboneFn) -> BackboneFn:
    """Decorator: make ``fn`` creatable by its function name."""
    if fn.__name__ in _BACKBONES:
        raise ValueError(f"backbone {fn.__name__!r} is registered twice")
    _BACKBONES[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def backbone_builder(name: str) -> BackboneFn | None:
    """The registered function that builds backbone ``name`` (None if there is none; timm models are not registered).

    The built-ins are registered already: importing this module imports ``embdistill.models`` first, which does it.
    """
    return _BACKBONES.get(name)


def create_backbone(name: str, pretrained: bool | str = False, **kwargs: Any) -> Backbone:
    """Build a registered backbone, or any timm model as ``timm/<name>``."""
    if name.startswith("timm/"):
        from embdistill.models.timm_backbone import timm_backbone

        return timm_backbone(name.removeprefix("timm/"), pretrained=pretrained, **kwargs)
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()} or 'timm/<any timm model>'")
    fn = _BACKBONES[name]
    try:  # check the arguments first, so a TypeError raised inside the build is not misreported
        inspect.signature(fn).bind(pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments {kwargs} for backbone {name!r}: {err}") from err
    return fn(pretrained=pretrained, **kwargs)
