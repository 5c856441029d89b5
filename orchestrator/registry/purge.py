"""Purging: every model version an erasure made unlawful loses its LoggedModel and its files (``mlflow gc``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from orchestrator.errors import LineagePurgeFailed
from orchestrator.registry.tracking import LOGGED_MODEL_TAG, PURGED_BY_REQUEST, Registry

__all__ = ["Purger"]

log = logging.getLogger(__name__)

_GC_TIMEOUT_S = 300


class Purger:
    """Makes superseded versions unloadable while keeping their lineage (version entry, tags, run)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.client = registry.client

    def purge_superseded(self, request_id: str, keep: str) -> list[str]:
        """Make every version older than ``keep`` unloadable: delete its LoggedModel and gc its files.

        Expunge has no incremental data add, so every earlier version holds every subject an
        erasure removes: all of them are purged. The versions stay, tagged with the request
        that purged them, so lineage (runs, tags, receipts) survives. Idempotent: a failed
        purge is finished by calling this again (or by the next erasure).
        """
        from mlflow.exceptions import MlflowException

        name = self.registry.model_name
        doomed = [
            v
            for v in self.client.search_model_versions(f"name = '{name}'")
            if int(v.version) < int(keep) and PURGED_BY_REQUEST not in v.tags
        ]
        model_ids: list[str] = []
        for version in doomed:
            model_id = version.tags.get(LOGGED_MODEL_TAG)
            if not model_id:
                raise LineagePurgeFailed(
                    f"model version {name}/{version.version} has no LoggedModel id (source {version.source}); "
                    "it was not registered by this Expunge release. Delete it by hand with "
                    "MlflowClient.delete_model_version and remove its artifacts."
                )
            for alias in version.aliases:
                self.client.delete_registered_model_alias(name, alias)
            try:
                self.client.get_logged_model(model_id)
            except MlflowException:
                pass  # soft-deleted by an interrupted purge: gc below finishes it
            else:
                self.client.delete_logged_model(model_id)
            model_ids.append(model_id)
        if model_ids:
            self._gc(model_ids)
        for version in doomed:
            self.client.set_model_version_tag(name, version.version, PURGED_BY_REQUEST, request_id)
            self.client.set_model_version_tag(name, version.version, "expunge.purged_by_version", keep)
            self.client.update_model_version(
                name,
                version.version,
                description=f"PURGED by erasure {request_id} (now version {keep}): weights deleted. "
                f"Was: {version.description or ''}",
            )
        if doomed:
            log.info("request %s: purged %d earlier model version(s) of %s", request_id, len(doomed), name)
        return [str(v.version) for v in doomed]

    def _gc(self, model_ids: list[str]) -> None:
        """``mlflow gc`` in a child process: the only call that deletes a LoggedModel's files."""
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.registry.uri}
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "gc",
            "--backend-store-uri",
            self.registry.backend_store_uri,
            "--logged-model-ids",
            ",".join(model_ids),
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_GC_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise LineagePurgeFailed(
                f"`mlflow gc` failed to delete the files of superseded model(s) {model_ids} "
                f"(exit {done.returncode}): {done.stderr.strip()[-800:]}. The erasure itself is committed; "
                "fix the cause (tracking.backend_store_uri, artifact store access) and call "
                "Lineage.purge_superseded(request_id, keep=<current version>) to finish the purge."
            )
