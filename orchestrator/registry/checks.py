"""Read-only checks of the registry for ``expunge verify``: superseded versions unloadable, no files left; request runs.

Opening an ``AuditView`` writes nothing (unlike ``Lineage``, which finishes interrupted purges
when it opens, and so would hide the very failure a verification looks for). Only
``log_verification`` writes: the report, to the request's runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.catalog import RegistryBinding
from expunge.orchestrator.config import StorageConfig, TrackingConfig
from expunge.orchestrator.errors import ConfigError, TrackingUnreachable
from expunge.orchestrator.registry.artifacts import ArtifactEraser
from expunge.orchestrator.registry.chain_anchors import ChainAnchor, ChainAnchors
from expunge.orchestrator.registry.ownership import shares_history
from expunge.orchestrator.registry.purge_notice import PurgeNotice, notice_objects
from expunge.orchestrator.registry.tracking import (
    ENDPOINT_TAG,
    LOGGED_MODEL_TAG,
    PURGED_BY_REQUEST,
    REQUEST_TAG,
    Registry,
    equals_filter,
    same_store,
    store_endpoint,
    stored_elsewhere,
)
from expunge.shards.store import ObjectStore

__all__ = ["AuditView", "RegistryCheck", "VersionCheck", "remaining_artifact_objects"]

log = logging.getLogger(__name__)

_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


class VersionCheck(BaseModel):
    """One model version that held the subject: what is left of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str
    ensemble_version: int
    purged_by_request: str | None
    aliases: tuple[str, ...]
    logged_model_record: bool
    #: Stored object versions (S3) or files (local) left under the version's artifact location,
    #: not counting the purge notice (``purge_notice.py``) when it is there byte for byte.
    remaining_objects: int
    loadable: bool
    #: The purge notice is there, exactly as the purge wrote it: loading the version names the erasure.
    notice: bool = False

    @property
    def clean(self) -> bool:
        return not (self.aliases or self.logged_model_record or self.remaining_objects or self.loadable)


class RegistryCheck(BaseModel):
    """The registry after an erasure: the served version and every version that held the subject."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tracking_uri: str
    model_name: str
    alias: str
    served_version: str | None
    served_ensemble_version: int | None
    versions: tuple[VersionCheck, ...]
    #: LoggedModels of this model built from an older ensemble that no version references, still present.
    orphan_models: tuple[str, ...]
    problems: tuple[str, ...]


def _ensemble_version(tags: dict[str, str]) -> int:
    value = tags.get("expunge.ensemble_version", "")
    return int(value) if value.isdigit() else 0


class AuditView:
    """A read-only view of one deployment's registry (its experiment and registered model).

    Raises (on open):
        ConfigError: a sqlite tracking URI whose database file does not exist (MLflow would
            create an empty one and report every check as passed).
        TrackingUnreachable: the tracking server or database does not answer.
    """

    def __init__(self, binding: RegistryBinding, storage: StorageConfig | str) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        uri = binding.tracking_uri
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise ConfigError(
                f"no MLflow database at {uri}: pass the --tracking-uri the store was trained with "
                "(verification never creates a registry)"
            )
        self.binding = binding
        self.client = MlflowClient(tracking_uri=uri)
        self.store = ObjectStore(storage)
        try:
            experiment = self.client.get_experiment_by_name(binding.experiment)
        except MlflowException as exc:
            raise TrackingUnreachable(uri, str(exc).splitlines()[0][:300]) from exc
        self.experiment_id = str(experiment.experiment_id) if experiment is not None else None
        self.artifact_root = str(experiment.artifact_location) if experiment is not None else ""
        tracking = TrackingConfig(
            uri=uri, experiment=binding.experiment, model_name=binding.model_name, alias=binding.alias
        )
        # The registry's own searches (safe filters, paging), without Registry.open's create-if-missing.
        self.registry = Registry(
            self.client, tracking, uri, uri, self.experiment_id or "", self.artifact_root, self.store
        )
        self.eraser = ArtifactEraser.from_env()

    # ----- what an erasure must have left ---------------------------------------------------------------
    def check_erasure(self, ensemble_version_after: int) -> RegistryCheck:
        """Every version built from an ensemble older than ``ensemble_version_after`` (they all held the subject).

        Each must carry no alias, have no LoggedModel record, keep no stored object version
        under its artifact location but the purge notice, and not load. The alias must serve a
        version built from ``ensemble_version_after`` or later, and no alias may point at a purged
        version, whichever erasure purged it.
        """
        problems: list[str] = []
        name, alias = self.binding.model_name, self.binding.alias
        if self.experiment_id is None:
            problems.append(f"experiment {self.binding.experiment!r} does not exist in {self.binding.tracking_uri}")
        served = self._alias_target()
        served_ensemble = _ensemble_version(served.tags) if served is not None else None
        elsewhere = str(served.tags.get("expunge.storage", "")) if served is not None else ""
        endpoint = str(served.tags.get(ENDPOINT_TAG, "")) if served is not None else ""
        if served is None:
            problems.append(f"no version of {name!r} carries the alias {alias!r}")
        elif elsewhere and served_ensemble is not None and not shares_history(served, self.store):
            where = (
                f"made by the store at {elsewhere}, not this one (a copy of it, or its original)"
                if stored_elsewhere(elsewhere, self.store.uri, endpoint, store_endpoint(self.store.config))
                else f"made from an ensemble v{served_ensemble} this store never published as it is (a copy of it at "
                "the same place elsewhere, or a backup of it older than that version)"
            )
            problems.append(
                f"the alias {alias!r} serves version {served.version}, {where}, and not in this store's history: "
                "nothing says that version is without the subject"
            )
        elif served_ensemble is not None and served_ensemble < ensemble_version_after:
            problems.append(
                f"the alias {alias!r} serves version {served.version}, built from ensemble v{served_ensemble}, "
                f"which predates the erasure (v{ensemble_version_after})"
            )
        aliases = self.registry.aliases() if self.experiment_id else {}
        versions = [
            self._check_version(v, aliases.get(str(v.version), ()))
            for v in sorted(self.registry.model_versions(), key=lambda v: int(v.version))
            if _ensemble_version(v.tags) < ensemble_version_after
        ]
        referenced = {v.tags.get(LOGGED_MODEL_TAG) for v in self.registry.model_versions()}
        orphans = tuple(
            str(m.model_id)
            for m in (self.registry.logged_models() if self.experiment_id else [])
            if m.model_id not in referenced and _ensemble_version(m.tags) < ensemble_version_after
        )
        for version in versions:
            if not version.clean:
                problems.append(_describe(version))
        problems += self._aliases_on_purged(aliases, {v.version for v in versions if v.aliases})
        problems += [f"LoggedModel {m} (built before the erasure, no version) still exists" for m in orphans]
        here = store_endpoint(self.store.config)
        if problems and served is not None and stored_elsewhere(elsewhere, self.store.uri, endpoint, here):
            problems.append(  # a copy checked against the registry it records, which serves its original
                f"the alias {alias!r} serves the store at {elsewhere}, not this one: if this store is a copy with an "
                "MLflow registry of its own, pass --tracking-uri naming it (a copy run with tracking off: a job "
                "config with tracking.enabled: false)"
            )
        return RegistryCheck(
            tracking_uri=self.binding.tracking_uri,
            model_name=name,
            alias=alias,
            served_version=str(served.version) if served is not None else None,
            served_ensemble_version=served_ensemble,
            versions=tuple(versions),
            orphan_models=orphans,
            problems=tuple(problems),
        )

    def _aliases_on_purged(self, aliases: dict[str, tuple[str, ...]], reported: set[str]) -> list[str]:
        """An alias on a purged version (set by hand in the UI, say), wherever it is; ``reported``: named already."""
        problems = []
        for version in self.registry.model_versions():
            notice = PurgeNotice.of(version, self.binding.alias)
            names = aliases.get(str(version.version), ())
            if notice is None or not names or str(version.version) in reported:
                continue
            problems.append(
                f"alias(es) {list(names)} point at version {version.version}, which erasure request "
                f"{notice.request_id!r} PURGED (its weights are deleted; it cannot load): move them to version "
                f"{notice.use_version} or later"
            )
        return problems

    # ----- the receipt log's anchors ----------------------------------------------------------------------
    def chain_anchors(self) -> list[ChainAnchor]:
        """The ``expunge.chain.*`` anchors on this store's runs, by sequence (see ``ChainAnchors.read``).

        Raises:
            TrackingUnreachable: the tracking server or database does not answer.
        """
        return ChainAnchors(self.client, self.binding.tracking_uri, self.experiment_id, self.store.uri).read()

    def registered_ensemble_versions(self) -> set[int]:
        """The store versions MLflow holds a model version of (tag ``expunge.ensemble_version``).

        Raises:
            TrackingUnreachable: the tracking server or database does not answer.
        """
        found = self.client.search_model_versions(f"name = '{self.binding.model_name}'")
        return {_ensemble_version(v.tags) for v in found if v.tags.get("expunge.ensemble_version", "").isdigit()}

    def _alias_target(self) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.binding.model_name, self.binding.alias)
        except MlflowException:
            return None

    def _check_version(self, version: Any, aliases: tuple[str, ...]) -> VersionCheck:
        from mlflow.exceptions import MlflowException

        record = False
        model_id = version.tags.get(LOGGED_MODEL_TAG)
        if model_id:
            try:
                self.client.get_logged_model(model_id)
                record = True
            except MlflowException as exc:
                if exc.error_code != _NOT_FOUND:
                    raise
        remaining = remaining_artifact_objects(str(version.source), self.artifact_root, self.eraser)
        expected = PurgeNotice.of(version, self.binding.alias)
        noticed = 0
        if remaining and expected is not None:
            noticed = notice_objects(str(version.source), self.artifact_root, self.eraser, expected)
        remaining -= noticed
        return VersionCheck(
            version=str(version.version),
            ensemble_version=_ensemble_version(version.tags),
            purged_by_request=version.tags.get(PURGED_BY_REQUEST),
            aliases=aliases,
            logged_model_record=record,
            remaining_objects=remaining,
            loadable=remaining > 0 and _loads(str(version.source)),
            notice=noticed > 0,
        )

    # ----- the runs of a request ------------------------------------------------------------------------------
    def request_runs(self, request_id: str) -> list[Any]:
        """The runs of this store tagged ``expunge.request_id = request_id``, newest first."""
        if self.experiment_id is None:
            return []
        from mlflow.utils.search_utils import SearchUtils

        clause = equals_filter(f"tags.`{REQUEST_TAG}`", request_id, SearchUtils.parse_search_filter)
        runs = self._runs(clause)
        mine = [r for r in runs if r.data.tags.get(REQUEST_TAG) == request_id and self._ours(r)]
        return sorted(mine, key=lambda r: r.info.start_time or 0, reverse=True)

    def request_ids(self) -> set[str]:
        """Request ids of every erasure run (found or not found) this store's registry records."""
        if self.experiment_id is None:
            return set()
        runs = self._runs("tags.`expunge.kind` = 'erasure'")
        return {r.data.tags[REQUEST_TAG] for r in runs if REQUEST_TAG in r.data.tags and self._ours(r)}

    def _ours(self, run: Any) -> bool:
        return same_store(str(run.data.tags.get("expunge.storage", "")), self.store.uri)

    def _runs(self, clause: str | None) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id or ""], filter_string=clause or "", max_results=1000, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def log_verification(self, request_id: str, report: dict[str, Any], markdown: str, passed: bool) -> list[str]:
        """Attach the report (JSON and Markdown) to every run of the request and tag the outcome; returns run ids."""
        run_ids = []
        for run in self.request_runs(request_id):
            run_id = str(run.info.run_id)
            self.client.log_text(run_id, markdown, "verification/verify-report.md")
            self.client.log_text(run_id, json.dumps(report, indent=1), "verification/verify-report.json")
            self.client.set_tag(run_id, "expunge.verification", "passed" if passed else "failed")
            self.client.set_tag(run_id, "expunge.verified_at", str(report.get("checked_at", "")))
            run_ids.append(run_id)
        return run_ids


def remaining_artifact_objects(location: str, artifact_root: str, eraser: ArtifactEraser) -> int:
    """Stored object versions (S3: every version, delete markers excluded) or files (local) under ``location``.

    ``location`` is a model's artifact location, resolved like the purge resolves it (a proxied
    ``mlflow-artifacts:`` location maps to ``MLFLOW_ARTIFACTS_DESTINATION``).

    Raises:
        ArtifactStoreNotErasable: a location on storage Expunge cannot list (see ``ArtifactEraser.resolve``).
    """
    target = eraser.resolve(location, artifact_root)
    parsed = urlparse(target)
    if parsed.scheme in ("s3", "s3a"):
        store = ObjectStore(StorageConfig(uri=target.replace("s3a://", "s3://", 1), endpoint_url=eraser.s3_endpoint))
        return sum(1 for v in store.list_versions() if not v.is_delete_marker)
    folder = Path(url2pathname(parsed.path) if parsed.scheme == "file" else target)
    if folder.is_file():
        return 1
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _loads(location: str) -> bool:
    """Does MLflow load a pyfunc model from ``location``? Any failure means "no": that is the outcome checked."""
    import mlflow.pyfunc

    try:
        mlflow.pyfunc.load_model(location)
    except Exception:  # every kind of failure to load is the answer "not loadable"
        return False
    return True


def _describe(version: VersionCheck) -> str:
    left = []
    if version.loadable:
        left.append("it still loads")
    if version.remaining_objects:
        left.append(f"{version.remaining_objects} stored file(s) remain")
    if version.logged_model_record:
        left.append("its LoggedModel record remains")
    if version.aliases:
        left.append(f"it carries alias(es) {list(version.aliases)}")
    purged = f", PURGED by erasure {version.purged_by_request!r}" if version.purged_by_request else ""
    return f"version {version.version} (ensemble v{version.ensemble_version}{purged}) held the subject: " + ", ".join(
        left
    )
