"""The training loop and what only it uses. ``run(config)`` trains (and distils) one run: see ``loop.py``."""
from embdistill.engine.train.loop import NonFiniteLossError, RunResult, run

__all__ = ["NonFiniteLossError", "RunResult", "run"]
