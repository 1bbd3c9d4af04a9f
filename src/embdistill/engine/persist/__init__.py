"""What a run keeps on disk: its directory, started afresh or resumed (``rundir.py``), its metrics log
(``runlog.py``) and its cached test embeddings (``test_embeddings.py``)."""
