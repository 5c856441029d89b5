"""Training: placement (pure), partitioning, streamed input, slice arithmetic and the ``Trainer``."""
