"""The forget path: routing (pure), the ``Eraser`` (retrain, commit, receipt) and the store purge."""
