"""Purging: every model version an erasure made unlawful loses its files (every stored copy) and its LoggedModel.

A version is purged in an order a crash can interrupt anywhere: files first (through
``ArtifactEraser``: then it no longer loads), then the LoggedModel (soft, then hard delete, which
is what ``mlflow gc --logged-model-ids`` does), then a notice where the files were (loading the
version then raises ``PurgedVersionError``, naming the erasure and the version to use;
``purge_notice.py``), then the version's ``PURGED`` tags and description. Each step is
idempotent, and a version counts as purged only once tagged, so running the purge again (the
next erasure, or the next ``Lineage`` open) finishes an interrupted one. LoggedModels that no
version references (a record interrupted before its version existed) are purged with them.
"""

from __future__ import annotations

import logging
from typing import Any

from expunge.orchestrator.errors import LineagePurgeFailed
from expunge.orchestrator.registry.artifacts import ArtifactEraser
from expunge.orchestrator.registry.faults import fault_point
from expunge.orchestrator.registry.purge_notice import PurgeNotice, write_notice
from expunge.orchestrator.registry.tracking import LOGGED_MODEL_TAG, PURGED_BY_REQUEST, Registry

__all__ = ["Purger", "ensemble_version"]

log = logging.getLogger(__name__)

_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


def ensemble_version(tags: dict[str, str]) -> int:
    """The ``expunge.ensemble_version`` tag of a version or LoggedModel (0 when absent)."""
    value = tags.get("expunge.ensemble_version", "")
    return int(value) if value.isdigit() else 0


class Purger:
    """Makes superseded versions unloadable while keeping their lineage (version entry, tags, run)."""

    def __init__(self, registry: Registry, eraser: ArtifactEraser) -> None:
        self.registry = registry
        self.client = registry.client
        self.eraser = eraser
        #: ``keep`` of the last ``purge_superseded`` that finished in this process (None: none yet).
        self.finished: str | None = None
        #: Every version numbered below this one is purged, files and LoggedModel (known here).
        self._purged_below = 1

    def purge_superseded(self, request_id: str, keep: str) -> list[str]:
        """Make every version older than ``keep`` unloadable and delete its files; returns the versions purged.

        Every earlier version is purged, whether or not it held the erased subjects (a version
        made before an ingest added them did not): the rule needs no per-version lookup, and no
        version older than an erasure is ever served again. Versions newer than ``keep`` (ingests
        after the erasure) are left alone. The versions stay, tagged with the request
        that purged them, so lineage (runs, tags, receipts) survives. LoggedModels of this
        registered model that no version references and that were built from an older
        ensemble than ``keep`` are deleted too. Idempotent.
        """
        name = self.registry.model_name
        # Versions below _purged_below are purged and their LoggedModels deleted: neither doomed
        # nor referencing a LoggedModel, so the search leaves them out (it reads each with its tags).
        versions = self.registry.model_versions(since=self._purged_below)
        kept = [v for v in versions if str(v.version) == str(keep)]
        keep_ensemble = ensemble_version(kept[0].tags) if kept else 0
        doomed = sorted(
            (v for v in versions if int(v.version) < int(keep) and PURGED_BY_REQUEST not in v.tags),
            key=lambda v: int(v.version),
        )
        referenced = {v.tags.get(LOGGED_MODEL_TAG) for v in versions}
        orphans = [
            m
            for m in self.registry.logged_models()
            if m.model_id not in referenced and ensemble_version(m.tags) < keep_ensemble
        ]
        aliases = self.registry.aliases() if doomed else {}
        targets: list[tuple[str, str]] = []  # (LoggedModel id, artifact location)
        for version in doomed:
            model_id = version.tags.get(LOGGED_MODEL_TAG)
            if not model_id:
                raise LineagePurgeFailed(
                    f"model version {name}/{version.version} has no LoggedModel id (source {version.source}); "
                    "it was not registered by this Expunge release. Delete it by hand with "
                    "MlflowClient.delete_model_version and remove its artifacts."
                )
            fault_point("purge.alias")
            for alias in aliases.get(str(version.version), ()):
                self.client.delete_registered_model_alias(name, alias)
            targets.append((model_id, str(version.source)))
        targets += [(str(m.model_id), str(m.artifact_location)) for m in orphans]
        if targets:
            fault_point("purge.artifacts")
            for _, location in targets:
                self.eraser.erase(location, self.registry.artifact_root)
            fault_point("purge.delete_model")
            for model_id, _ in targets:
                self._soft_delete(model_id)
            fault_point("purge.gc")
            self._hard_delete([model_id for model_id, _ in targets])
        notices = [(v, self._notice(v, request_id, keep)) for v in doomed]
        if notices:
            fault_point("purge.notice")
        for version, notice in notices:
            write_notice(notice, str(version.source), self.registry.artifact_root, self.eraser)
        if notices:
            fault_point("purge.tags")
        for version, notice in notices:
            tags = notice.tags()
            marker = tags.pop(PURGED_BY_REQUEST)
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version.version, key, value)
            self.client.update_model_version(
                name, version.version, description=notice.description(version.description or "")
            )
            # Last: this tag is what marks the version purged.
            self.client.set_model_version_tag(name, version.version, PURGED_BY_REQUEST, marker)
        if targets:
            log.info(
                "request %s: purged %d earlier model version(s) and %d unregistered model(s) of %s",
                request_id,
                len(doomed),
                len(orphans),
                name,
            )
        self.finished = str(keep)
        self._purged_below = max(self._purged_below, int(keep))
        return [str(v.version) for v in doomed]

    def _notice(self, version: Any, request_id: str, keep: str) -> PurgeNotice:
        return PurgeNotice(
            model_name=self.registry.model_name,
            version=str(version.version),
            request_id=request_id,
            use_version=keep,
            alias=self.registry.alias,
        )

    def _soft_delete(self, model_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_logged_model(model_id)
        except MlflowException as exc:
            if exc.error_code != _NOT_FOUND:
                raise
            return  # already deleted by an interrupted purge: the hard delete below finishes it
        self.client.delete_logged_model(model_id)

    def _hard_delete(self, model_ids: list[str]) -> None:
        """Remove the LoggedModel records, as ``mlflow gc --logged-model-ids`` does, but in-process (no 5 s child).

        Uses the backend store's ``_hard_delete_logged_model``, the call ``mlflow gc`` makes; the
        files are already gone (``ArtifactEraser``), which is the part gc could not do fully.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import _get_store

        store: Any = _get_store(self.registry.backend_store_uri)  # type: ignore[no-untyped-call]
        hard_delete = getattr(store, "_hard_delete_logged_model", None)
        if hard_delete is None:
            raise LineagePurgeFailed(
                f"the tracking backend {self.registry.backend_store_uri!r} cannot hard-delete LoggedModels "
                f"{model_ids}; their files are deleted already. Use a database backend (sqlite, PostgreSQL, "
                "MySQL) for tracking.backend_store_uri, then open the Lineage again to finish the purge."
            )
        for model_id in model_ids:
            try:
                hard_delete(model_id)
            except MlflowException as exc:
                if exc.error_code != _NOT_FOUND:
                    raise LineagePurgeFailed(
                        f"deleting the LoggedModel record {model_id} failed ({exc}); its files are deleted "
                        "already. Fix the cause (tracking.backend_store_uri, database access) and open the "
                        "Lineage again, or call Lineage.purge_superseded(request_id, keep=<current version>)."
                    ) from exc
