"""Training and scoring machinery, one sub-package per concern; ``train.run`` is where a run starts.

=============  ====================================================================================
``train/``     the loop (``loop.py``: set up, start or resume, loop, finish) and what only it uses:
               the objective from the config, optimizer and schedule, precision, the epoch choice
               (``train.select``), SIGINT/SIGTERM, the resumable state and the RNG
``batches/``   images to batches: splits and loaders, the numbered augmented views, the unlabelled
               stream of semi-supervised runs
``teacher/``   the frozen teacher and its in-run cache (``frozen.py``), the on-disk teacher bank
``persist/``   what a run keeps on disk: its directory, fresh or resumed, its metrics log, its cached test
               embeddings
``scoring/``   embed a split and score it (``embed.py``); ``embdistill evaluate`` (``command.py``)
``compute/``   the device, and data parallelism under torchrun
=============  ====================================================================================

Checkpoint files are read and written by ``embdistill.checkpoints`` (export, report and
search read them too); the metrics themselves are ``embdistill.evaluation``.
"""
