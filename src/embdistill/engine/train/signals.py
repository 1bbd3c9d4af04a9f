"""SIGINT/SIGTERM during training: finish the step, checkpoint, then stop saying how to resume."""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from embdistill.config import ExperimentConfig

if TYPE_CHECKING:
    from embdistill.engine.train.state import TrainState


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a step and a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """While active, SIGINT/SIGTERM ask the loop to stop after its current step; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker: the main process decides
            return
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        try:
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                  "(press Ctrl-C again to abort at once)", file=sys.stderr, flush=True)
        except RuntimeError:  # interrupted a write to stderr
            pass

    def adopt(self, signum: int | None) -> None:
        """Stop as if ``signum`` had arrived here too (another process received it)."""
        if signum is not None and self.signum is None:
            self.signum = signum

    def raise_if_requested(self, cfg: ExperimentConfig, state: TrainState) -> None:
        """After the checkpoint: stop, saying how to resume."""
        if self.signum is None:
            return
        command = "distill" if cfg.distill else "train"
        where = f"epoch {state.epoch + 1}, batch {state.batch}" if state.batch else f"end of epoch {state.epoch}"
        raise Interrupted(self.signum, (
            f"stopped by {signal.Signals(self.signum).name} after step {state.step} ({where}); "
            f"checkpoint saved to {cfg.run_dir / 'last.pt'}. "
            f"Resume with: embdistill {command} --resume {cfg.run_dir}"))
