"""What sees all shards: training, erasure, evidence, registry, service and serving, behind ``Coordinator``.

Internal: users import from ``expunge`` (``from expunge import Client``); see docs/architecture.md
for what each subpackage owns.
"""

if __name__ != "expunge.orchestrator":  # a checkout's root on sys.path would load every module twice
    raise ImportError(
        f"this folder is the package expunge.orchestrator, imported here as {__name__!r}: "
        "import expunge (e.g. `from expunge import Client`) after `pip install -e .`"
    )
