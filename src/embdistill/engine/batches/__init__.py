"""From image lists to batches: splits and loaders (``loaders.py``), the numbered augmented views
(``views.py``), and the endless unlabelled batches of semi-supervised runs (``unlabelled_stream.py``)."""
