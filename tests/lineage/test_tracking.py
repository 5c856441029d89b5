"""The connection to MLflow: an unreachable server is a quick typed error, and names with quotes work."""

from __future__ import annotations

import pickle
import socket
import time

import mlflow.pyfunc
import pytest
from mlflow.utils.search_utils import SearchModelVersionUtils

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import PurgedVersionError, TrackingUnreachable
from expunge.orchestrator.registry import PURGED_BY_REQUEST, Lineage
from expunge.orchestrator.registry.tracking import equals_filter
from tests.engine import job
from tests.lineage._support import email_rows, subjects

ROWS = email_rows(users=12, seed=8)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_tracking_server_is_a_quick_typed_error(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    tracking = TrackingConfig(uri=uri, backend_store_uri=f"sqlite:///{tmp_path / 'server.db'}")
    began = time.monotonic()
    with pytest.raises(TrackingUnreachable) as unreachable:
        Lineage(tracking, str(tmp_path / "store"))
    assert time.monotonic() - began < 15  # MLflow's own retries would take minutes
    message = str(unreachable.value)
    assert uri in message
    assert "nothing was changed" in message
    assert "Start the server" in message
    assert str(pickle.loads(pickle.dumps(unreachable.value))) == message


@pytest.mark.parametrize(
    "value",
    ["plain", "team's-model", 'say "hi"', "back\\slash", "both ' and \"", "x' OR name = 'y", "trailing\\"],
)
def test_filter_clauses_mean_exactly_the_name_or_are_not_built(value):
    clause = equals_filter("name", value, SearchModelVersionUtils.parse_search_filter)
    if "'" in value and '"' in value:
        assert clause is None  # not expressible: the caller filters client-side
        return
    assert clause is not None
    assert SearchModelVersionUtils.parse_search_filter(clause) == [
        {"type": "attribute", "key": "name", "comparator": "=", "value": value}
    ]


@pytest.mark.parametrize("name", ["team's-model", 'team\'s "best" model'])
def test_quotes_in_model_experiment_and_store_names_work(name, tmp_path, hasher, monkeypatch):
    """``team's-model`` goes through a filter quoted with ``"``; a name with both quotes is filtered client-side."""
    folder = tmp_path / "o'brien's data"
    store = str(folder / "team's store")
    tracking = TrackingConfig(uri=f"sqlite:///{folder / 'mlflow.db'}", experiment=f"{name} runs", model_name=name)
    lineage = Lineage(tracking, store)
    other = Lineage(tracking.model_copy(update={"model_name": f"{name}-other"}), store)  # must not be touched
    coordinator = Coordinator(store, hasher, lineage, pool_factory=local_pool)
    coordinator.train(ROWS, job(shards=2, slices=2))
    Coordinator(str(folder / "other store"), hasher, other, pool_factory=local_pool).train(
        ROWS, job(shards=1, slices=1)
    )
    coordinator.forget([subjects(ROWS)[4]], request_id="ticket-obrien")

    reopened = Lineage(tracking, store)
    assert reopened.current_version() == "2"
    assert [str(v.version) for v in sorted(reopened.registry.model_versions(), key=lambda v: int(v.version))] == [
        "1",
        "2",
    ]
    assert reopened.client.get_model_version(name, "1").tags[PURGED_BY_REQUEST] == "ticket-obrien"
    assert PURGED_BY_REQUEST not in other.client.get_model_version(f"{name}-other", "1").tags
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.uri or "")
    with pytest.raises(PurgedVersionError, match="'ticket-obrien'"):
        mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert mlflow.pyfunc.load_model(f"models:/{name}@production") is not None
    assert mlflow.pyfunc.load_model(f"models:/{name}-other@production") is not None
