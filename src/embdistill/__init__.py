"""embdistill: compact networks for image embedding, by metric learning and distillation.

Where things live, lowest layer first (docs/architecture.md draws the map): ``data``
(datasets, samplers, transforms), ``models`` (backbone registry, embedder), ``losses``
(metric and distillation losses), ``evaluation`` (retrieval metrics); ``config`` (every
config section, how it is read and checked); ``checkpoints`` and ``teacher_space`` (what a
checkpoint holds); ``engine`` (the training loop, teacher, run directory, scoring);
``report``, ``export``, ``search``, ``serve`` and ``cli`` (the ``embdistill`` command).
"""

__version__ = "0.1.0"
