"""The README's bring-your-own-model example, run as written: trained, erased, exact."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from expunge.orchestrator.config import CustomModelConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError, ModelImportError
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


KEY = "3f9c2b7e1d8a4f6052c7e9b1a3d5f7082e4c6a8b0d2f4e6a8c0e2a4c6e8a0c2e"


def test_an_unimportable_module_is_a_typed_error_naming_it_and_the_fix():
    with pytest.raises(ModelImportError) as caught:
        model_for(CustomModelConfig(factory="no_such_module_here:Model"))
    assert isinstance(caught.value, ConfigError)  # exit 2: bad configuration, not a bug
    assert caught.value.module == "no_such_module_here"
    message = str(caught.value)
    for fix in ("folder that holds 'no_such_module_here'", "PYTHONPATH", "pip install", "--working-dir"):
        assert fix in message
    assert pickle.loads(pickle.dumps(caught.value)).module == "no_such_module_here"  # crosses Ray processes


def test_a_module_in_the_current_folder_is_found_as_python_m_would(tmp_path, monkeypatch, readme_model):
    # The `expunge` program's import path lacks the current folder; running it beside the module works.
    module = tmp_path / "beside" / "beside_models.py"
    module.parent.mkdir()
    module.write_text((tmp_path / "readme_models.py").read_text())
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(module.parent))])
    monkeypatch.chdir(module.parent)
    try:
        model = model_for(CustomModelConfig(factory="beside_models:Logistic", options={"num_features": 3}))
    finally:
        sys.modules.pop("beside_models", None)
    assert model.task == "classification"


@pytest.mark.parametrize("job_name", ["forget", "serve"])
def test_a_job_run_where_the_module_does_not_import_exits_2_naming_it(tmp_path, readme_model, job_name):
    # Issue 18: `forget` from another folder started Ray, then its shard actors died on the import: exit 4.
    rows = synthetic_tabular(subjects=8, rows_per_subject=3, features=8, classes=2, seed=1)
    config = job(CustomModelConfig(factory=readme_model, options={"num_features": 8}), shards=2, slices=1)
    Coordinator(str(tmp_path / "store"), SubjectHasher(KEY.encode()), pool_factory=local_pool).train(rows, config)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "job.yaml").write_text(f"storage: {{uri: {tmp_path / 'store'}}}\ntracking: {{enabled: false}}\n")
    args = ["forget", "--config", "job.yaml", "--subject", "person-1"] if job_name == "forget" else ["serve"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "expunge.pipelines.cli",
            *args,
            *(["--config", "job.yaml"] if job_name == "serve" else []),
        ],
        cwd=elsewhere,
        env={**env, "PYTHONPATH": str(README.parent), "EXPUNGE_SUBJECT_KEY": KEY, "EXPUNGE_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "the module 'readme_models' cannot be imported" in done.stderr
    assert "PYTHONPATH" in done.stderr
    assert "starting Ray" not in done.stderr  # refused before anything started


def test_the_readme_states_where_the_module_must_import():
    section = README.read_text().split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    for word in ("`train`", "`forget`", "`serve`", "PYTHONPATH", "pip install", "--working-dir"):
        assert word in section, word
