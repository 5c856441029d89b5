"""Which store a registry serves: a copy of a store must not publish to its original's registry."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from expunge.orchestrator.catalog import Catalog, RegistryBinding
from expunge.orchestrator.config import StorageConfig, TrackingConfig
from expunge.orchestrator.errors import ConfigError, ExpungeError, RegistryOfAnotherStoreError
from expunge.orchestrator.registry.binding import bind_tracking
from expunge.orchestrator.registry.tracking import (
    ENDPOINT_TAG,
    MANIFEST_TAG,
    MLFLOW_HTTP_DEFAULTS,
    Registry,
    endpoint_url,
    local_folder,
    same_store,
    store_endpoint,
    store_tag,
    stored_elsewhere,
)
from expunge.orchestrator.store_purge import PROBE_PREFIX
from expunge.shards.store import ObjectStore

__all__ = ["bind_writer", "refuse_another_stores_registry", "shares_history"]

log = logging.getLogger(__name__)

_MOVES_TOLD: set[tuple[str, str]] = set()  # (old place, new place) of a moved store, warned about


def refuse_another_stores_registry(registry: Registry, served: Any) -> None:
    """Refuse, before any MLflow write, a registry whose alias serves a version another store made.

    ``served``: the model version the alias serves (None: none yet). A copy of a store records its
    original's registry: publishing there would move the alias to the copy's model and purge the
    original's versions, and a copy taken before an erasure would put the erased subject back in
    production. Where the store the alias names is seen to hold no ensemble any more (this one moved
    from there), or ``tracking.take_over_from`` names it (a place this host cannot see: another host's
    folder, an S3 endpoint that does not answer), this store takes the registry over, with a warning,
    but only when it published the version the alias serves (``shares_history``): a copy older than
    the move is refused. A local folder whose parent folder this host lacks is not seen, so a copy
    on another host is refused, not taken for a move. A tag recorded as a relative path (before tags
    were absolute) cannot be placed and is let through.

    Raises:
        RegistryOfAnotherStoreError: the alias serves a version made by another store that still
            exists, or one this store never published.
    """
    recorded = str(served.tags.get("expunge.storage", "")) if served is not None else ""
    endpoint = str(served.tags.get(ENDPOINT_TAG, "")) if served is not None else ""
    if _elsewhere(recorded, endpoint, registry.store, probe=True) is False:  # None: unknown, refused below as another
        if served is not None and _forked(recorded, served, registry.store):
            raise RegistryOfAnotherStoreError(
                f"the MLflow model {registry.model_name!r} at {registry.uri} serves (alias {registry.alias!r}, "
                f"version {served.version}) ensemble v{served.tags.get('expunge.ensemble_version')} of a store at "
                f"this place ({recorded}), but this store never published that version as it is: this store is a "
                "copy of that one at the same path or bucket on another host or endpoint, or an older backup of it. "
                "Publishing here would move the alias off that store's model and could serve a subject it erased "
                "since. Nothing was changed. Work on this store with tracking off (tracking.enabled: false) or with "
                "a registry of its own (--tracking-uri, given every time)."
            )
        return
    here = _placed(store_tag(registry.store_uri), registry.store_endpoint)
    recorded_place = _placed(recorded, endpoint)
    named = registry.tracking.take_over_from
    holds = _holds(recorded, registry.store, endpoint)
    ours = shares_history(served, registry.store)
    if ours and (holds is False or (holds is None and named and same_store(recorded, named))):
        if (recorded_place, here) in _MOVES_TOLD:
            return
        _MOVES_TOLD.add((recorded_place, here))  # once per process: a job reconciles more than once
        log.warning(
            "the alias %r of MLflow model %r serves a version of the store at %s, which %s: the store moved to "
            "%s, which the registry follows from now on (update storage.uri in job configs that name the old place)",
            registry.alias,
            registry.model_name,
            recorded_place,
            "holds no ensemble any more" if holds is False else "tracking.take_over_from names",
            here,
        )
        return
    if holds is None and not named:
        advice = (
            f"; it cannot be seen from here (another host's folder, an endpoint that does not answer): if it is gone "
            f"for good and this store replaces it, set tracking.take_over_from: {recorded!r} in the job config"
        )
    elif not ours:
        advice = (
            f". This store did not publish the version the alias serves ({served.version}): it is a copy older than "
            "that version, or another store, and cannot take that registry over"
        )
    elif holds:
        advice = "; that store still holds an ensemble, so it is not gone: remove it first if this store replaces it"
    else:
        advice = f"; tracking.take_over_from names {named!r}, not that store"
    raise RegistryOfAnotherStoreError(
        f"the MLflow model {registry.model_name!r} at {registry.uri} serves (alias {registry.alias!r}, version "
        f"{served.version}) the store at {recorded_place}, not this one at {here}: one is a copy of the other, or "
        "another store publishes to this model (a new store needs a tracking.model_name of its own). "
        "Publishing here would move the alias off that store's model and purge its versions, and a copy older "
        "than one of its erasures would serve the erased subject again. Nothing was changed. Work on a copy "
        "with tracking off (a job config with tracking.enabled: false) or with a registry of its own "
        f"(--tracking-uri, given every time){advice}."
    )


def shares_history(version: Any, store: ObjectStore) -> bool:
    """Whether ``store`` published the ensemble version MLflow model ``version`` was built from: the same
    manifest bytes (its ``MANIFEST_TAG``), or, for a version registered before that tag, the same version
    number for the same request. A copy and its original share their past, and a store that moved keeps
    all of it; a copy that went its own way numbers its versions alike but holds other manifests."""
    tags = version.tags
    number = str(tags.get("expunge.ensemble_version", ""))
    catalog = Catalog(store)
    if not number.isdigit() or not catalog.has(int(number)):
        return False
    digest = tags.get(MANIFEST_TAG)
    if digest:
        return bool(catalog.manifest_sha256(int(number)) == digest)
    return (catalog.read(int(number)).request_id or "none") == tags.get("expunge.request_id", "none")


def bind_writer(
    recorded: RegistryBinding | None,
    given: TrackingConfig | None,
    tracking_uri: str | None,
    storage: StorageConfig,
    probe: bool = True,
) -> TrackingConfig:
    """``bind_tracking`` for a job that writes the store, which lets a copy of a store go its own way.

    A store that records no registry (trained with tracking off) keeps tracking off unless the job
    asks for it (``tracking_uri``, or a ``given`` with any field set, as a config's tracking section
    gives it): a default registry would hold versions and receipts the store knows nothing of.

    Where ``bind_tracking`` refuses the given settings (tracking off, another registry) because the
    store records a registry, and that registry's alias serves another store that still holds an
    ensemble (this store is a copy of it, or it of this one), the given settings are taken: the
    recorded registry does not serve this store, so nothing of it stays loadable on this store's
    account. Tracking off is ``given`` with ``enabled: false``; another registry, ``tracking_uri`` (with
    the recorded experiment, model and alias when no config is given).

    ``probe``: where the recorded store differs from this one by the spelling of its S3 endpoint only,
    write a nonce object here and look for it there (``_same_place``); False (a reader): such a store
    is not taken for another.

    Raises:
        ConfigError: as ``bind_tracking``, for a store its recorded registry serves (or that cannot be told).
    """
    if recorded is None and tracking_uri is None and (given is None or not given.model_fields_set):
        # Trained with tracking off, and this job asks for none: recording it in a default registry would
        # leave versions and receipts the store knows nothing of (``verify`` then failed the store).
        log.info(
            "the store %s records no MLflow registry (trained with tracking off): this job records nothing in "
            "MLflow either (a store is bound to a registry when it is trained with tracking on)",
            storage.uri,
        )
        return TrackingConfig(enabled=False)
    try:
        return bind_tracking(recorded, given, tracking_uri, storage.uri)
    except ConfigError:
        if recorded is None or not _serves_another_store(recorded, storage, probe):
            raise
    # No config: the recorded experiment, model and alias at the given URI, as verify --tracking-uri reads them.
    names = {"experiment": recorded.experiment, "model_name": recorded.model_name, "alias": recorded.alias}
    tracking = given or TrackingConfig(**names)
    tracking = tracking.model_copy(update={"uri": tracking_uri}) if tracking_uri else tracking
    log.info(
        "the MLflow registry this store records serves another store (this one is a copy): %s",
        f"publishing to {tracking.uri or 'the default registry'}" if tracking.enabled else "tracking off",
    )
    return tracking


def _serves_another_store(recorded: RegistryBinding, storage: StorageConfig, probe: bool) -> bool:
    """Whether ``recorded``'s alias serves a version of another store that still holds an ensemble (False:
    it serves this store, nothing, or cannot be read)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = recorded.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return False  # no registry there (MLflow would make an empty one): it serves nothing
    for name, value in MLFLOW_HTTP_DEFAULTS.items():  # a server that is down: refused in seconds, not minutes
        os.environ.setdefault(name, value)
    try:
        served = MlflowClient(uri).get_model_version_by_alias(recorded.model_name, recorded.alias)
    except (MlflowException, OSError):
        return False
    where, endpoint = str(served.tags.get("expunge.storage", "")), str(served.tags.get(ENDPOINT_TAG, ""))
    here = ObjectStore(storage)
    elsewhere = _elsewhere(where, endpoint, here, probe)
    if elsewhere is None:
        return False  # cannot be told: never let the store off its registry
    if not elsewhere:
        return _forked(where, served, here)  # a copy at the same place, gone its own way
    return _holds(where, here, endpoint) is not False


def _elsewhere(recorded: str, endpoint: str, here: ObjectStore, probe: bool) -> bool | None:
    """Whether a version's ``expunge.storage`` tag (and ``ENDPOINT_TAG``) names another store than ``here``;
    where only the spelling of the S3 endpoint differs, the nonce probe tells (``_same_place``; not run
    when ``probe`` is False): None where it cannot be told."""
    elsewhere = stored_elsewhere(recorded, here.uri, endpoint, store_endpoint(here.config))
    if not elsewhere or not same_store(recorded, here.uri):
        return elsewhere
    same = _same_place(recorded, endpoint, here) if probe else None
    return None if same is None else not same


def _forked(recorded: str, served: Any, store: ObjectStore) -> bool:
    """Whether the version ``served``, tagged as this store's, is not in this store's history: a copy at
    the same place elsewhere (another host, a loopback endpoint) or a backup older than that version."""
    tags = served.tags
    if not recorded or not str(tags.get("expunge.ensemble_version", "")).isdigit():
        return False  # nothing placed, or not a version Expunge made
    return not shares_history(served, store)


def _same_place(uri: str, endpoint: str, here: ObjectStore) -> bool | None:
    """Whether S3 ``endpoint`` reaches ``here`` itself (the same bucket and prefix, by another name of its
    server: ``minio:9000`` inside a compose network, ``localhost:9000`` outside): a nonce object is
    written here, looked for there, and deleted (every version). None: it cannot be told."""
    try:
        other = ObjectStore(
            here.config.model_copy(
                update={
                    "uri": uri,
                    "endpoint_url": endpoint_url(endpoint),
                    "timeout_s": min(here.config.timeout_s, 5.0),
                }
            )
        )
        folder = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        key = f"{folder}/nonce"
        here.put(key, b"which store am I")
    except ExpungeError:
        return None
    try:
        return other.holds_keys(folder)  # an S3 server's own answer, or None
    finally:
        try:
            here.delete([key])
        except ExpungeError as exc:
            log.warning("could not delete the probe object %s of %s: %s", key, here.uri, exc)


def _holds(uri: str, here: ObjectStore, endpoint: str) -> bool | None:
    """Whether the store at ``uri`` publishes an ensemble: True, False, or None where this host cannot see
    it (a local folder whose parent folder this host lacks: another host's, not mounted here; an S3
    prefix that does not answer)."""
    folder = local_folder(uri)
    if folder is not None and not folder.parent.is_dir():
        return None
    return _holds_ensemble(uri, here, endpoint)


def _placed(tag: str, endpoint: str) -> str:
    """A store's tag with its S3 endpoint, as messages name it."""
    return f"{tag} (endpoint {endpoint})" if endpoint else tag


def _holds_ensemble(uri: str, here: ObjectStore, endpoint: str = "") -> bool | None:
    """Whether the store at ``uri`` (with ``here``'s storage options, at S3 ``endpoint`` where one is
    recorded) publishes an ensemble; None when it cannot be read (a store that does not answer is not
    taken for gone)."""
    update: dict[str, Any] = {"uri": uri}
    if endpoint:  # another endpoint may be out of reach from here: asked briefly
        update.update(endpoint_url=endpoint_url(endpoint), timeout_s=min(here.config.timeout_s, 5.0))
    try:
        store = ObjectStore(here.config.model_copy(update=update))
    except ExpungeError:
        return None
    return store.holds_keys("ensemble")  # only S3's own answer says "none": a web server's 404 does not
