"""Shipping a trained model: export, INT8 quantization and the commands that run them.

* ``choices.py``: the choices the deploy commands parse and their error types (no heavy import);
* ``cpu_features.py``: which integer kernels this CPU gives ONNX Runtime (CPUID);
* ``export.py``: a checkpoint to ONNX or TorchScript, with its preprocessing recorded;
* ``quantize.py``: INT8 static post-training quantization of an ONNX file;
* ``commands.py``: ``embdistill export``, ``embed``, ``index``, ``search`` and ``serve``.

This file imports nothing: ``choices`` and ``cpu_features`` are leaves that the lowest layers
import (tests/test_imports.py), and importing them must not pull in export's libraries.
"""
