"""Scoring a network on a split: embed it and compute the retrieval metrics (``embed.py``), and the
``embdistill evaluate`` command for a saved checkpoint (``command.py``). The metrics themselves are
``embdistill.evaluation``."""
