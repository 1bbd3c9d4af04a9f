"""embdistill: compact networks for image embedding, by metric learning and distillation.

Where things live: ``data`` (datasets, samplers, transforms), ``models`` (backbone
registry, embedder), ``losses`` (metric and distillation losses), ``engine``
(the training loop, teacher, checkpoints), ``evaluation`` (retrieval metrics),
``cli`` (the ``embdistill`` command).
"""

__version__ = "0.1.0"
