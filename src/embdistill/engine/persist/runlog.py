"""A run directory's metrics log (JSON lines) and its final summary."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class RunLog:
    """Appends one JSON object per line to ``metrics.jsonl``; every line carries its ``kind``."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled  # False on data-parallel ranks other than 0: one process writes the log

    def write(self, kind: str, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
