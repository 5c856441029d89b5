"""What one shard owns: its slices, checkpoint history, training loop and Ray actor."""

if __name__ != "expunge.shards":  # a checkout's root on sys.path would load every module twice
    raise ImportError(
        f"this folder is the package expunge.shards, imported here as {__name__!r}: "
        "import expunge (e.g. `from expunge import Client`) after `pip install -e .`"
    )
