"""The servable model of a commit: a pyfunc holding copied weights, code and pins; a new version and the alias."""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.config import AnyModelConfig, CustomModelConfig, MLPConfig
from expunge.orchestrator.errors import ConfigError, StorageCorruptError
from expunge.orchestrator.registry.faults import fault_point
from expunge.orchestrator.registry.scratch import Staging
from expunge.orchestrator.registry.tracking import LOGGED_MODEL_TAG, MANIFEST_TAG, MODEL_NAME_TAG, Registry
from expunge.orchestrator.serving.servable import ENSEMBLE_ARTIFACT, Constituent, export_ensemble, read_constituents
from expunge.shards.models import factory_module, task_of

__all__ = ["LoggedServable", "Packager"]

log = logging.getLogger(__name__)

#: Versions tried by ``Packager.hold`` before it gives up (each attempt follows a newer commit).
_HOLD_ATTEMPTS = 20

_ORCHESTRATOR = Path(__file__).resolve().parents[1]
_PYFUNC_FILE = _ORCHESTRATOR / "serving" / "pyfunc_model.py"
_ARTIFACTS_FOLDER = "artifacts"  # where MLflow puts a pyfunc's artifacts
#: A version's code folder (the pyfunc flavor's ``code``): what MLflow names it for ``code_paths``.
_CODE_FOLDER = "code"
# Imported by the pyfunc at load time; pinned to what wrote the checkpoints.
# scipy and threadpoolctl: an item_stats version fits its statistics when it loads (one BLAS thread).
_SERVING_REQUIREMENTS = (
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "pydantic",
    "pyyaml",
    "fsspec",
    "scipy",
    "threadpoolctl",
)


@functools.cache
def _requirements() -> tuple[str, ...]:
    """The serving pins, read once per process: the installed distributions are what wrote the versions."""
    pins = []
    for name in _SERVING_REQUIREMENTS:
        version = importlib.metadata.version(name).split("+")[0]  # torch's "+cpu" is an index, not a version
        pins.append(f"{name}=={version}")
    return tuple(pins)


def _code_sources(model: AnyModelConfig) -> dict[str, Path]:
    """What a version's ``code/`` folder holds: name there -> source file or folder.

    The ``expunge`` package, laid out as a wheel installs it (``expunge/__init__.py`` beside
    ``orchestrator``, ``shards``, ``pipelines``), so a version loads with the code that wrote it; and
    a custom model's factory module (its whole top-level package): the version must load where
    that module is not importable (a serving container, another folder).
    """
    # The folders beside orchestrator/ (a checkout: expunge/__init__.py sits in expunge/) or inside
    # expunge/ (a wheel). Found from this file, not from `import expunge`, which a stray ./expunge
    # folder in the working directory can turn into an empty namespace package.
    parent = _ORCHESTRATOR.parent
    init = (
        parent / "expunge" / "__init__.py" if (parent / "expunge" / "__init__.py").is_file() else parent / "__init__.py"
    )
    sources = {"expunge/__init__.py": init}
    sources.update({f"expunge/{folder}": parent / folder for folder in ("orchestrator", "shards", "pipelines")})
    factory = _factory_source(model)
    if factory is not None:
        sources[factory.name] = factory
    return sources


def _link_code(code: Path, model: AnyModelConfig) -> None:
    """Lay out a version's ``code/`` folder as links to the source files (no ``__pycache__``, no ``.pyc``).

    Real folders, one symbolic link per file (a copy where links are refused): the upload
    (``log_model_artifacts``) follows the links, so the artifact store holds one real copy of
    each file, read at upload time, and nothing is copied on the way there. Removing the staging
    folder removes the links only.
    """
    for name, source in _code_sources(model).items():
        source, target = source.resolve(), code / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_file(source, target)
            continue
        for folder, subfolders, files in os.walk(source, followlinks=True):  # copytree follows links too
            subfolders[:] = [d for d in subfolders if d != "__pycache__"]
            into = target / os.path.relpath(folder, source)
            into.mkdir(parents=True, exist_ok=True)
            for file in files:
                if not file.endswith(".pyc"):
                    _link_file(Path(folder, file), into / file)


def _link_file(source: Path, target: Path) -> None:
    try:
        os.symlink(source, target)
    except OSError:  # links not allowed here (e.g. Windows without the privilege): a copy
        shutil.copy2(source, target)


def _factory_source(model: AnyModelConfig) -> Path | None:
    """The top-level package folder (or single-file module) that holds a custom model's factory."""
    if not isinstance(model, CustomModelConfig):
        return None
    module_name = model.factory.partition(":")[0]
    parts = module_name.split(".")
    if parts[0] == "expunge":
        return None  # copied with the package itself (all of it)
    spec = factory_module(model).__spec__  # not importable here: a typed error that names the module and the fix
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(
            f"training.model.factory {model.factory!r} is not a module file Expunge can copy into the model "
            f"version (found {spec.origin if spec else None!r}); define the factory in a .py module or package"
        )
    origin = Path(spec.origin).resolve()
    top = origin.parent if spec.submodule_search_locations is not None else origin
    for _ in parts[1:]:
        top = top.parent
    if (top.name if top.is_dir() else top.stem) != parts[0]:
        raise ConfigError(
            f"training.model.factory {model.factory!r} resolves to {origin}, whose top-level folder is not "
            f"named {parts[0]!r}; Expunge copies the top-level package into the model version, so keep the "
            "module in an ordinary package folder"
        )
    return top


def _signature(manifest: EnsembleManifest) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    subjects = [ColSpec("string", "subject_digest", required=False), ColSpec("string", "subject_id", required=False)]
    if isinstance(manifest.model, CustomModelConfig):
        # Your model's inputs are yours to describe: no input schema, so MLflow passes every
        # request column through to its ``encode``. Outputs: one score per row, or probabilities.
        shape = (-1,) if task_of(manifest.model) == "rating" else (-1, -1)
        return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.float64), shape)]))
    if isinstance(manifest.model, MLPConfig):
        inputs = Schema([*subjects, ColSpec(Array("double"), "features")])
        outputs = Schema([TensorSpec(np.dtype(np.float64), (-1, manifest.model.num_classes))])
    else:  # rating families (matrix factorisation and others): one score per (subject, item)
        inputs = Schema([*subjects, ColSpec("long", "item_id")])
        outputs = Schema([TensorSpec(np.dtype(np.float64), (-1,))])
    return ModelSignature(inputs=inputs, outputs=outputs)


class LoggedServable:
    """A LoggedModel holding one ensemble version: its id and artifact location."""

    def __init__(self, model_id: str, location: str) -> None:
        self.model_id = model_id
        self.location = location


class Packager:
    """Logs a commit's ensemble as a servable pyfunc and registers it as the new version behind the alias."""

    def __init__(self, registry: Registry, staging: Staging) -> None:
        self.registry = registry
        self.client = registry.client
        self.staging = staging
        self._held: tuple[int, list[tuple[Constituent, bytes]]] | None = None  # (ensemble version, its constituents)

    def hold(self, manifest: EnsembleManifest) -> EnsembleManifest:
        """Read the constituents of ``manifest`` now, or of a newer version if a commit purged them meanwhile.

        Returns the version held; the next ``log_servable`` of it copies the bytes read here. The
        service registers beside its commits, and every commit deletes the checkpoints its version
        superseded: read at the copy, seconds later, a version under a stream of commits was often
        gone already, and the registration failed and waited to try again.

        Raises:
            StorageCorruptError: a checkpoint of the newest version is missing too (a damaged store).
        """
        store = self.registry.store
        for _ in range(_HOLD_ATTEMPTS):
            try:
                self._held = (manifest.version, read_constituents(store, manifest))
                return manifest
            except StorageCorruptError:
                newest = Catalog(store).latest()
                if newest is None or newest.version <= manifest.version:
                    raise  # not superseded: the store is damaged
                log.debug("ensemble v%d was superseded while read; registering v%d", manifest.version, newest.version)
                manifest = newest
        self._held = (manifest.version, read_constituents(store, manifest))
        return manifest

    def log_servable(self, run_id: str, manifest: EnsembleManifest) -> LoggedServable:
        """Log the ensemble as a pyfunc LoggedModel holding a copy of every constituent."""
        import mlflow.pyfunc
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model
        from mlflow.models.model import MLMODEL_FILE_NAME
        from mlflow.pyfunc.model import CONFIG_KEY_ARTIFACT_RELATIVE_PATH, CONFIG_KEY_ARTIFACT_URI, CONFIG_KEY_ARTIFACTS
        from mlflow.utils.file_utils import get_total_file_size

        fault_point("model.create")
        model = self.client.create_logged_model(
            self.registry.experiment_id,
            name=f"ensemble-v{manifest.version}",
            source_run_id=run_id,
            tags={
                "expunge.ensemble_version": str(manifest.version),
                **self.registry.store_tags,
                MODEL_NAME_TAG: self.registry.model_name,
            },
            model_type="expunge-sisa-ensemble",
        )
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        # Staged where the next open removes it even if this process is killed mid-way (scratch.py).
        with self.staging.folder() as root:
            fault_point("model.stage")
            with warnings.catch_warnings():
                # An input example would be loaded and predicted at logging time; the signature suffices.
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
                mlflow_model = Model(
                    artifact_path=model.artifact_location,
                    model_uuid=model.model_id,
                    run_id=run_id,
                    model_id=model.model_id,
                )
                # No code_paths: MLflow would copy every file of the package into the folder. The
                # code goes in as links instead, and the flavor names its folder, as MLflow's own
                # code_paths handling writes it (the MLmodel is saved again once "code" is set).
                mlflow.pyfunc.save_model(
                    path=str(root / "model"),
                    python_model=str(_PYFUNC_FILE),
                    pip_requirements=list(_requirements()),
                    signature=_signature(manifest),
                    mlflow_model=mlflow_model,
                )
            _link_code(root / "model" / _CODE_FOLDER, manifest.model)
            # No artifacts= either: MLflow would copy the weights through a folder in the system's
            # temp dir, which a process killed there leaves behind (the staging sweep never looks
            # there). They are exported into the model's folder, and the flavor names them as
            # MLflow's own artifacts handling writes it.
            relative = f"{_ARTIFACTS_FOLDER}/{ENSEMBLE_ARTIFACT}"
            held, self._held = self._held, None  # dropped whatever happens next: one ensemble held at most
            read = held[1] if held is not None and held[0] == manifest.version else None
            export_ensemble(self.registry.store, manifest, root / "model" / relative, read)
            flavor = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME]
            flavor[mlflow.pyfunc.CODE] = _CODE_FOLDER
            flavor[CONFIG_KEY_ARTIFACTS] = {
                ENSEMBLE_ARTIFACT: {CONFIG_KEY_ARTIFACT_RELATIVE_PATH: relative, CONFIG_KEY_ARTIFACT_URI: relative}
            }
            mlflow_model.model_size_bytes = get_total_file_size(root / "model")
            mlflow_model.save(str(root / "model" / MLMODEL_FILE_NAME))
            fault_point("model.upload")
            self.client.log_model_artifacts(model.model_id, str(root / "model"))
        fault_point("model.finalize")
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return LoggedServable(str(model.model_id), str(model.artifact_location))

    def register(
        self,
        run_id: str,
        manifest: EnsembleManifest,
        parent: str | None,
        servable: LoggedServable,
        description: str,
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        """Create the model version of ``servable`` (with ``extra_tags``) and move the alias to it; returns it."""
        name = self.registry.model_name
        tags = {
            **(extra_tags or {}),
            "expunge.ensemble_version": str(manifest.version),
            "expunge.parent_version": parent or "none",
            "expunge.request_id": manifest.request_id or "none",
            "expunge.kind": manifest.kind,
            **self.registry.store_tags,
            MANIFEST_TAG: Catalog(self.registry.store).manifest_sha256(manifest.version),
            LOGGED_MODEL_TAG: servable.model_id,
        }
        fault_point("version.create")
        version = self.client.create_model_version(
            name,
            # The artifact location, not models:/<id>: MLflow's sqlite registry resolves the
            # latter through the process-global tracking URI, not this client's.
            source=servable.location,
            run_id=run_id,
            tags=tags,
            model_id=servable.model_id,
            description=description,
        )
        # The alias moves only after the store commit (the caller publishes first).
        fault_point("alias.move")
        self.client.set_registered_model_alias(name, self.registry.alias, version.version)
        return str(version.version)
