"""Training machinery: the loop, the frozen teacher, loaders, checkpoints."""
