"""What a model version carries: a custom model's own code, and a signature (MLflow infers nothing)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pytest
from mlflow.models import Model

from expunge.orchestrator.config import CustomModelConfig, MFConfig, MLPConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.registry import Lineage
from expunge.pipelines.datasets import synthetic_tabular
from expunge.shards.rows import FEATURES
from tests.engine import job
from tests.lineage._support import email_rows

README = Path(__file__).resolve().parents[2] / "README.md"
TABULAR = synthetic_tabular(subjects=16, rows_per_subject=4, features=8, classes=2, seed=5)

# A new interpreter in a folder where the model's package does not exist: only MLflow and the frame.
# The development install's own finder is removed first: otherwise a module missing from the
# version's code/ folder would silently come from this checkout.
_LOAD_ELSEWHERE = """
import importlib.util, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
import numpy as np, pandas as pd, mlflow.pyfunc
importable = [importlib.util.find_spec(m) is not None for m in (sys.argv[1], "expunge")]
model = mlflow.pyfunc.load_model(f"models:/{sys.argv[2]}@production")
np.save(sys.argv[4], model.predict(pd.read_parquet(sys.argv[3])))
import expunge.shards.training
print(json.dumps({"importable_before_load": importable, "shards_from": expunge.shards.training.__file__}))
"""


@pytest.fixture
def byo_package(tmp_path, monkeypatch):
    """The README's example model inside a package ``byo_models`` importable only from this test."""
    section = README.read_text().split("## Bring your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README lost its example"
    package = tmp_path / "src" / "byo_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A user\'s own model family."""\n')
    (package / "logistic.py").write_text(code.group(1))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield "byo_models.logistic:Logistic"
    for name in [m for m in sys.modules if m == "byo_models" or m.startswith("byo_models.")]:
        del sys.modules[name]


def _tracking(tmp_path: Path, name: str) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment=name, model_name=name)


def test_a_custom_model_version_loads_where_its_module_is_not_importable(tmp_path, hasher, byo_package):
    tracking = _tracking(tmp_path, "byo")
    lineage = Lineage(tracking, str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    config = CustomModelConfig(factory=byo_package, options={"num_features": 8})
    coordinator.train(TABULAR, job(config, shards=2, slices=2))
    live = coordinator.predict(TABULAR)
    TABULAR.select([FEATURES]).to_pandas().to_parquet(tmp_path / "request.parquet")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "RAY_ADDRESS"}}
    env["MLFLOW_TRACKING_URI"] = lineage.uri
    done = subprocess.run(
        [
            *(sys.executable, "-c", _LOAD_ELSEWHERE, "byo_models", "byo"),
            *(str(tmp_path / "request.parquet"), str(tmp_path / "served.npy")),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["importable_before_load"] == [False, False]
    assert "/code/expunge/shards/" in outcome["shards_from"]  # the version's own copy
    assert np.array_equal(np.load(tmp_path / "served.npy"), live)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("kind", ["mf", "mlp", "custom"])
def test_every_version_is_logged_with_a_signature_and_mlflow_infers_nothing(kind, tmp_path, hasher, byo_package):
    rows, model = {
        "mf": (email_rows(users=12), MFConfig()),
        "mlp": (TABULAR, MLPConfig(num_features=8, hidden=(4,))),
        "custom": (TABULAR, CustomModelConfig(factory=byo_package, options={"num_features": 8})),
    }[kind]
    lineage = Lineage(_tracking(tmp_path, f"sig-{kind}"), str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    records = _Records()
    logging.getLogger("mlflow").addHandler(records)  # MLflow's logger does not propagate to pytest's
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coordinator.train(rows, job(model, shards=2, slices=2))
    finally:
        logging.getLogger("mlflow").removeHandler(records)
    said = records.messages + [str(w.message) for w in caught]
    assert [m for m in said if "signature" in m.lower() or "type hint" in m.lower()] == []
    source = lineage.client.get_model_version(f"sig-{kind}", "1").source
    signature = Model.load(str(Path(url2pathname(urlparse(source).path)) / "MLmodel")).signature
    assert signature is not None
    assert signature.outputs is not None


def test_a_single_file_factory_module_is_shipped_as_that_file(tmp_path, monkeypatch):
    from expunge.orchestrator.registry.packaging import _link_code

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "solo_model.py").write_text("class Model:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    try:
        _link_code(tmp_path / "code", CustomModelConfig(factory="solo_model:Model"))
    finally:
        sys.modules.pop("solo_model", None)
    assert sorted(p.name for p in (tmp_path / "code").iterdir()) == ["expunge", "solo_model.py"]
    assert sorted(p.name for p in (tmp_path / "code" / "expunge").iterdir()) == [
        "__init__.py",
        "orchestrator",
        "pipelines",
        "shards",
    ]
    assert (tmp_path / "code" / "solo_model.py").read_text().startswith("class Model")


def test_a_version_stores_its_own_copy_of_every_code_file_and_names_the_code_folder(tmp_path, hasher, byo_package):
    """The staging folder links to the sources; the version in the artifact store holds real files.

    A link there would make the version load whatever the checkout holds later (or nothing).
    """
    import expunge.orchestrator as orchestrator

    lineage = Lineage(_tracking(tmp_path, "copies"), str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    config = CustomModelConfig(factory=byo_package, options={"num_features": 8})
    coordinator.train(TABULAR, job(config, shards=2, slices=2))
    source = lineage.client.get_model_version("copies", "1").source
    folder = Path(url2pathname(urlparse(source).path))
    assert [p for p in folder.rglob("*") if p.is_symlink()] == []
    assert Model.load(str(folder / "MLmodel")).flavors["python_function"]["code"] == "code"
    sources = Path(orchestrator.__file__).resolve().parent
    shipped = folder / "code" / "expunge" / "orchestrator"
    expected = {p.relative_to(sources) for p in sources.rglob("*.py") if "__pycache__" not in p.parts}
    assert {p.relative_to(shipped) for p in shipped.rglob("*.py")} == expected
    assert (shipped / "coordinator.py").read_bytes() == (sources / "coordinator.py").read_bytes()
    assert [p for p in (folder / "code").rglob("*") if "__pycache__" in p.parts or p.suffix == ".pyc"] == []
    assert (folder / "code" / "byo_models" / "logistic.py").is_file()
    assert not (tmp_path / ".expunge-staging").exists()  # the staged links are gone with their folder


def test_a_versions_weights_never_pass_through_the_system_temp_folder(tmp_path, hasher, monkeypatch):
    """MLflow's artifacts= copies through the system temp dir, which a kill there leaves behind (no sweep looks).

    The weights go straight into the staging folder (swept on the next open); the version still
    loads them from its own artifacts folder.
    """
    import mlflow.pyfunc
    import mlflow.pyfunc.model

    def refused(*args, **kwargs):
        raise AssertionError("a model file was copied through MLflow's temp folder")

    monkeypatch.setattr(mlflow.pyfunc.model, "_download_artifact_from_uri", refused)
    lineage = Lineage(_tracking(tmp_path, "weights"), str(tmp_path / "store"))
    coordinator = Coordinator(str(tmp_path / "store"), hasher, lineage, pool_factory=local_pool)
    coordinator.train(TABULAR, job(MLPConfig(num_features=8, hidden=(4,)), shards=2, slices=2))
    source = lineage.client.get_model_version("weights", "1").source
    folder = Path(url2pathname(urlparse(source).path))
    artifacts = Model.load(str(folder / "MLmodel")).flavors["python_function"]["artifacts"]
    assert artifacts["ensemble"]["path"] == "artifacts/ensemble"
    assert any((folder / "artifacts" / "ensemble").rglob("*"))
    frame = TABULAR.slice(0, 3).select([FEATURES]).to_pandas()
    scores = mlflow.pyfunc.load_model(source).predict(frame)
    assert np.asarray(scores).shape[0] == 3
