"""The frozen teacher as training calls it (``frozen.py``) and its embeddings stored on disk once for
every later run (``bank.py``, ``embdistill bank``)."""
