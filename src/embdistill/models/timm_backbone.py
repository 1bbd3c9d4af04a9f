"""Any timm model as a backbone (``backbone: timm/<name>``), cut into its feature stages."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import timm
from torch import nn

from embdistill.data.transforms import Normalization
from embdistill.models.backbone import Backbone
from embdistill.models.weights import WeightsError


def timm_backbone(name: str, pretrained: bool | str = False, **kwargs) -> Backbone:
    """Stages end where timm's ``features_only`` would return a map; they are named ``stage0..N``.

    ``pretrained=True`` uses timm's own download (Hugging Face hub); a string is a local file.
    """
    overlay = {}
    if isinstance(pretrained, str):
        if not Path(pretrained).is_file():
            raise WeightsError(f"pretrained weights file {pretrained} does not exist")
        overlay = {"pretrained_cfg_overlay": {"file": pretrained}}
    try:
        net = timm.create_model(name, pretrained=bool(pretrained), features_only=True, **overlay, **kwargs)
    except RuntimeError as err:  # timm raises this for unknown names
        raise ValueError(f"timm cannot create {name!r}: {err}") from err
    except OSError as err:  # offline hub download
        raise WeightsError(f"timm could not fetch pretrained weights for {name!r}: {err}") from err
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    pending: list[nn.Module] = []
    for module_name, module in net.items():
        pending.append(module)
        if module_name in net.return_layers:
            stages[f"stage{len(stages)}"] = nn.Sequential(*pending)
            pending = []
    cfg = net.pretrained_cfg
    normalization = Normalization(tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    return Backbone(stages, normalization=normalization)
