"""Which store a registry serves: a copy of a store must not publish to its original's registry."""

from __future__ import annotations

import logging
from typing import Any

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.errors import ConfigError, ExpungeError
from expunge.orchestrator.registry.tracking import Registry, store_tag, stored_elsewhere
from expunge.shards.store import ObjectStore

__all__ = ["refuse_another_stores_registry"]

log = logging.getLogger(__name__)


def refuse_another_stores_registry(registry: Registry, served: Any) -> None:
    """Refuse, before any MLflow write, a registry whose alias serves a version another store made.

    ``served``: the model version the alias serves (None: none yet). A copy of a store records its
    original's registry: publishing there would move the alias to the copy's model and purge the
    original's versions, and a copy taken before an erasure would put the erased subject back in
    production. Where the store the alias names no longer holds an ensemble (this one moved from
    there), this store takes the registry over, with a warning. A tag recorded as a relative path
    (before tags were absolute) cannot be placed and is let through.

    Raises:
        ConfigError: the alias serves a version made by another store that still exists.
    """
    recorded = str(served.tags.get("expunge.storage", "")) if served is not None else ""
    if not stored_elsewhere(recorded, registry.store_uri):
        return
    here = store_tag(registry.store_uri)
    if not _holds_ensemble(recorded, registry.store):
        log.warning(
            "the alias %r of MLflow model %r serves a version of the store at %s, which holds no ensemble any "
            "more: the store moved to %s, which the registry follows from now on",
            registry.alias,
            registry.model_name,
            recorded,
            here,
        )
        return
    raise ConfigError(
        f"the MLflow model {registry.model_name!r} at {registry.uri} serves (alias {registry.alias!r}, version "
        f"{served.version}) the store at {recorded}, not this one at {here}: one is a copy of the other. "
        "Publishing here would move the alias off that store's model and purge its versions, and a copy older "
        "than one of its erasures would serve the erased subject again. Nothing was changed. Work on a copy "
        "with tracking off (tracking.enabled: false), or train a new store with its own tracking.model_name; "
        "if this store replaces the other, remove that one first."
    )


def _holds_ensemble(uri: str, here: ObjectStore) -> bool:
    """Whether the store at ``uri`` (with ``here``'s storage options) still publishes an ensemble; True
    when it cannot be read (a store that does not answer is not taken for gone)."""
    try:
        return Catalog(ObjectStore(here.config.model_copy(update={"uri": uri}))).latest() is not None
    except ExpungeError:
        return True
