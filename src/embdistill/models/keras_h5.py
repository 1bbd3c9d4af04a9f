"""Read the weights of a Keras HDF5 file (``model.save_weights`` / Keras applications releases).

The format: one HDF5 group per layer, named as the layer; the group's ``weight_names``
attribute lists that layer's arrays in order (``conv1/kernel:0``, ...), each stored at that
path inside the group. The file's ``layer_names`` attribute lists the layers in model order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from embdistill.models.weights import WeightsError

KerasWeights = dict[str, dict[str, np.ndarray]]  # layer -> {"kernel": array, "gamma": array, ...}


def _decode(names: np.ndarray | list) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_keras_weights(path: str | Path, expected: str) -> KerasWeights:
    """Every layer's arrays by short name (``kernel``, ``depthwise_kernel``, ``gamma``, ``moving_mean`` ...).

    ``expected`` says in words what the file should be; it ends every error, which names ``path``.
    """
    import h5py  # an optional dependency: only Keras weight files need it

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f  # a whole saved model keeps its weights there
            if "layer_names" not in root.attrs:
                raise WeightsError(f"{path} is HDF5 but not a Keras weights file (no 'layer_names' attribute); expected {expected}")
            layers: KerasWeights = {}
            for layer in _decode(root.attrs["layer_names"]):
                group = root[layer]
                arrays = {}
                for name in _decode(group.attrs.get("weight_names", [])):
                    short = name.rsplit("/", 1)[-1].split(":", 1)[0]
                    arrays[short] = np.asarray(group[name])
                if arrays:
                    layers[layer] = arrays
            return layers
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError) as err:  # not HDF5, truncated, or a dangling name in the file
        raise WeightsError(f"cannot read {path} as a Keras HDF5 weights file ({type(err).__name__}: {err}); expected {expected}") from err
