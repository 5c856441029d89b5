"""``Registry.model_versions(since=...)``: the versions from one number on, whatever quotes the model name holds."""

from __future__ import annotations

import pytest

from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.registry.tracking import Registry


@pytest.mark.parametrize("name", ["plain-model", 'it\'s "quoted"'])
def test_versions_since_a_number_leave_the_earlier_ones_and_other_models_out(tmp_path, name):
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="e", model_name=name)
    registry = Registry.open(tracking, str(tmp_path / "store"), check_root=lambda root: None)
    registry.client.create_registered_model("neighbour")
    for _ in range(4):
        registry.client.create_model_version(name, source="/nowhere", run_id=None)
        registry.client.create_model_version("neighbour", source="/nowhere", run_id=None)
    assert sorted(int(v.version) for v in registry.model_versions()) == [1, 2, 3, 4]
    assert sorted(int(v.version) for v in registry.model_versions(since=3)) == [3, 4]
    assert {v.name for v in registry.model_versions(since=2)} == {name}
    assert registry.model_versions(since=5) == []
