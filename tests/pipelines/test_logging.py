"""``--verbose`` reaches the library's own loggers (named ``expunge.*``)."""

import logging

import pytest

from expunge.pipelines._runtime import init_logging


@pytest.fixture
def restore_levels():
    yield
    logging.getLogger("expunge").setLevel(logging.NOTSET)


@pytest.mark.usefixtures("restore_levels")
@pytest.mark.parametrize(("verbose", "level"), [(True, logging.DEBUG), (False, logging.WARNING)])
def test_verbose_sets_every_expunge_logger(verbose, level):
    init_logging(verbose=verbose)
    for name in ("expunge.orchestrator.erasure.eraser", "expunge.shards.shard", "expunge.pipelines.forget"):
        assert logging.getLogger(name).getEffectiveLevel() == level
