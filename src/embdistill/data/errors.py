"""The one error for bad data, shared by the readers (data/datasets.py) and decoding (data/images.py)."""
from __future__ import annotations


class DatasetError(ValueError):
    """Bad dataset input: the message says what was wrong, where, and what was expected."""
