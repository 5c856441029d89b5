"""Settings a job config gives that a trained store overrides: named, so an edit is never silently ignored."""

from __future__ import annotations

import logging
from typing import Any

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.config import JobConfig, StorageConfig
from expunge.orchestrator.errors import ExpungeError
from expunge.shards.store import ObjectStore

__all__ = ["overridden_settings", "warn_overridden_settings"]

log = logging.getLogger(__name__)

#: Where a store's version keeps each section a job config also has.
_SECTIONS = ("sharding", "training")


def _differences(given: Any, stored: Any, path: str) -> list[str]:
    if isinstance(given, dict) and isinstance(stored, dict):
        if given.get("kind", stored.get("kind")) != stored.get("kind"):
            return [f"{path}.kind: {stored.get('kind')!r} in the store, {given['kind']!r} in the config"]
        return [d for key, value in given.items() for d in _differences(value, stored.get(key), f"{path}.{key}")]
    if given != stored:
        return [f"{path}: {stored!r} in the store, {given!r} in the config"]
    return []


def overridden_settings(job: JobConfig, manifest: EnsembleManifest) -> list[str]:
    """Pure: each setting the config sets explicitly that differs from the store's, as "path: store, config".

    Only fields written in the config count (defaults it leaves out are not a request); the model
    is compared with the store's resolved model (``num_items`` filled in), so an unset
    ``num_items`` is no difference.
    """
    stored = {
        "sharding": manifest.sharding.model_dump(mode="json"),
        "training": {**manifest.training.model_dump(mode="json"), "model": manifest.model.model_dump(mode="json")},
    }
    given = job.model_dump(mode="json", exclude_unset=True)
    return [
        d for section in _SECTIONS if section in given for d in _differences(given[section], stored[section], section)
    ]


def warn_overridden_settings(job: JobConfig | None, storage: StorageConfig, action: str) -> list[str]:
    """Log a warning naming the config's settings ``action`` will not use: the store's own win.

    A store changes only as it was trained (exactness needs the same training); a new model,
    ranker, sharding or optimiser means training a new store. Returns the differences (none when
    there is no config or no readable store: the job's own checks report that).
    """
    if job is None:
        return []
    try:
        manifest = Catalog(ObjectStore(storage)).latest()
    except ExpungeError:
        return []
    differences = overridden_settings(job, manifest) if manifest is not None else []
    if differences:
        log.warning(
            "%s uses the settings the store was trained with, not these from the config: %s. "
            "To change them, train a new store (`expunge train` into another storage.uri).",
            action,
            "; ".join(differences),
        )
    return differences
