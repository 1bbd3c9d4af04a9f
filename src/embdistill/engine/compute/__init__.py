"""Where a run computes: the device it asks for (``device.py``) and data parallelism under torchrun
(``distributed.py``)."""
