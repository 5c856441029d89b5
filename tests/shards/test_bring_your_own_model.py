"""The README's bring-your-own-model example, run as written: trained, erased, exact."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from expunge.orchestrator.config import CustomModelConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.pipelines.datasets import synthetic_tabular
from expunge.shards.models import model_for
from expunge.shards.rows import SUBJECT_ID
from tests.engine import from_scratch, job, subject_in_slice, without

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def readme_model(tmp_path, monkeypatch) -> str:
    section = README.read_text().split("## Bring your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README lost its example"
    (tmp_path / "readme_models.py").write_text(code.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "readme_models:Logistic"
    sys.modules.pop("readme_models", None)


def test_readme_example_trains_and_unlearns_exactly(tmp_path, hasher, readme_model):
    rows = synthetic_tabular(subjects=40, rows_per_subject=4, features=8, classes=2, seed=2)
    config = job(CustomModelConfig(factory=readme_model, options={"num_features": 8}), shards=2, slices=3)
    coordinator = Coordinator(str(tmp_path / "store"), hasher, pool_factory=local_pool)
    coordinator.train(rows, config)
    subject = subject_in_slice(coordinator, hasher, rows.column(SUBJECT_ID).to_pylist(), 1)
    receipt = coordinator.forget([subject])
    assert receipt.shards[0].slices_retrained == (1, 2)
    reference = from_scratch(tmp_path, coordinator, without(rows, [subject]), config, hasher)
    assert all(constituents_equal(coordinator.constituent_tensors(), reference.constituent_tensors()).values())
    assert coordinator.predict(rows.slice(0, 5)).shape == (5, 2)


def test_an_unimportable_factory_says_how_to_fix_it():
    with pytest.raises(ConfigError, match="cannot be imported"):
        model_for(CustomModelConfig(factory="no_such_module_here:Model"))
    with pytest.raises(ValueError, match="factory"):
        CustomModelConfig(factory="not a path")
