"""What a purged model version says, in its tags, its description and the notice left where its files were.

A purged version keeps its registry entry (lineage) but its files are deleted. In their place
the purge writes a *notice*: three small files (``NOTICE_FILES``) whose ``MLmodel`` makes
``mlflow.pyfunc.load_model`` raise ``PurgedVersionError`` (loader: ``serving/purged_version.py``)
instead of a bare "No such artifact". The notice's bytes are a pure function of the
``PurgeNotice``, so ``expunge verify`` counts as left over every stored object that is not
exactly the notice (``notice_objects``); it holds no personal data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.config import StorageConfig
from expunge.orchestrator.errors import PurgedVersionError
from expunge.orchestrator.registry.artifacts import ArtifactEraser
from expunge.orchestrator.registry.tracking import PURGED_BY_REQUEST
from expunge.orchestrator.serving import purged_version
from expunge.shards.store import ObjectStore

__all__ = [
    "NOTICE_FILES",
    "PURGED_TAG",
    "USE_VERSION_TAG",
    "PurgeNotice",
    "notice_objects",
    "write_notice",
]

#: Version tags of a purged version (with ``PURGED_BY_REQUEST``, set last, which marks it purged).
PURGED_TAG = "expunge.purged"
USE_VERSION_TAG = "expunge.use_version"
_PURGED_BY = "expunge.purged_by"
_PURGED_BY_VERSION = "expunge.purged_by_version"  # kept: what earlier releases wrote
_LOADER = "expunge_purged_version"
#: The notice's files, relative to the version's artifact location.
NOTICE_FILES = ("MLmodel", f"code/{_LOADER}.py", "purged.json")
_S3 = ("s3", "s3a")
#: What MLflow writes beside a local model's files when loading it by a ``models:/`` URI.
_MLFLOW_META = "registered_model_meta"


class PurgeNotice(BaseModel):
    """Why a version is purged and what to use instead: its tags, description, load error and notice files."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model_name: str
    version: str
    request_id: str
    #: The version the erasure committed (the one to load instead, or a later one).
    use_version: str
    alias: str

    @classmethod
    def of(cls, version: Any, alias: str) -> PurgeNotice | None:
        """The notice of a registry ``ModelVersion`` entity, or None when it is not purged."""
        tags = version.tags
        request = tags.get(PURGED_BY_REQUEST)
        if request is None:
            return None
        use = tags.get(USE_VERSION_TAG) or tags.get(_PURGED_BY_VERSION) or "?"
        return cls(
            model_name=version.name, version=str(version.version), request_id=request, use_version=use, alias=alias
        )

    def error(self) -> PurgedVersionError:
        return PurgedVersionError(self.model_name, self.version, self.request_id, self.use_version, self.alias)

    @property
    def message(self) -> str:
        return str(self.error())

    def description(self, was: str) -> str:
        """The version's description: a plain sentence starting with PURGED, then what it said before."""
        return (
            f"PURGED by erasure request {self.request_id}: this version held data of a person who asked to be "
            f"erased, so its weights were deleted and it cannot be loaded or served. Use the newest version, "
            f"models:/{self.model_name}@{self.alias}; when this erasure committed that was version "
            f"{self.use_version}. Was: {was}"
        )

    def tags(self) -> dict[str, str]:
        """Version tags, ``PURGED_BY_REQUEST`` last (it is what marks the version purged)."""
        return {
            PURGED_TAG: "true",
            _PURGED_BY: self.request_id,
            USE_VERSION_TAG: self.use_version,
            _PURGED_BY_VERSION: self.use_version,
            PURGED_BY_REQUEST: self.request_id,
        }

    def files(self) -> dict[str, bytes]:
        """The notice: relative path -> bytes (a few KB; deterministic for a given notice and release)."""
        notice = {**self.model_dump(), "message": self.message}
        mlmodel = (
            "flavors:\n"
            "  python_function:\n"
            f"    loader_module: {_LOADER}\n"
            "    code: code\n"
            "    data: purged.json\n"
            f"expunge_purged: {json.dumps(self.message)}\n"
        )
        return {
            NOTICE_FILES[0]: mlmodel.encode(),
            NOTICE_FILES[1]: Path(purged_version.__file__).read_bytes(),
            NOTICE_FILES[2]: json.dumps(notice, indent=1, sort_keys=True).encode(),
        }


def write_notice(notice: PurgeNotice, location: str, root: str, eraser: ArtifactEraser) -> None:
    """Write ``notice.files()`` at the version's artifact ``location`` (resolved as the purge resolves it).

    Raises:
        ArtifactStoreNotErasable: a location Expunge cannot write (see ``ArtifactEraser.resolve``).
    """
    target = eraser.resolve(location, root)
    if urlparse(target).scheme in _S3:
        store = _s3(target, eraser)
        for name, data in notice.files().items():
            store.put(name, data)
        return
    folder = _local(target)
    for name, data in notice.files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def notice_objects(location: str, root: str, eraser: ArtifactEraser, expected: PurgeNotice) -> int:
    """How many stored objects under ``location`` are the purge notice ``expected``: 0 (not there, or not exactly).

    ``len(NOTICE_FILES)`` when the notice files are there byte for byte as ``expected.files()``,
    each as one object version; one more for MLflow's own ``registered_model_meta`` when it names
    this very version (``mlflow.pyfunc.load_model("models:/...")`` writes it beside local files
    before the notice's loader runs). Any other difference and the answer is 0: every object then
    counts as left over.
    """
    import yaml

    target = eraser.resolve(location, root)
    wanted = (*NOTICE_FILES, _MLFLOW_META)
    stored: dict[str, list[bytes]] = {}
    if urlparse(target).scheme in _S3:
        store = _s3(target, eraser)
        for version in store.list_versions():
            if version.key in wanted and not version.is_delete_marker:
                stored.setdefault(version.key, []).append(store.get(version.key, version.version_id))
    else:
        folder = _local(target)
        stored = {name: [(folder / name).read_bytes()] for name in wanted if (folder / name).is_file()}
    files = expected.files()
    if any(stored.get(name) != [files[name]] for name in NOTICE_FILES):
        return 0
    if _MLFLOW_META not in stored:
        return len(NOTICE_FILES)
    try:
        meta = yaml.safe_load(stored[_MLFLOW_META][0]) if len(stored[_MLFLOW_META]) == 1 else None
    except yaml.YAMLError:
        meta = None
    names_this_version = (
        isinstance(meta, dict)
        and set(meta) == {"model_name", "model_version"}
        and meta["model_name"] == expected.model_name
        and str(meta["model_version"]) == expected.version
    )
    return len(NOTICE_FILES) + 1 if names_this_version else len(NOTICE_FILES)


def _s3(url: str, eraser: ArtifactEraser) -> ObjectStore:
    return ObjectStore(StorageConfig(uri=url.replace("s3a://", "s3://", 1), endpoint_url=eraser.s3_endpoint))


def _local(location: str) -> Path:
    parsed = urlparse(location)
    return Path(url2pathname(parsed.path) if parsed.scheme == "file" else location).resolve()
