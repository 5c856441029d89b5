"""Ray-job entry points, one recipe per job, each with the same main() shape."""

if __name__ != "expunge.pipelines":  # a checkout's root on sys.path would load every module twice
    raise ImportError(
        f"this folder is the package expunge.pipelines, imported here as {__name__!r}: "
        "import expunge (e.g. `from expunge import Client`) after `pip install -e .`"
    )
