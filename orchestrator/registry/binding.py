"""Which MLflow registry a job on an existing store talks to: the one the store records (pure)."""

from __future__ import annotations

from expunge.orchestrator.catalog import RegistryBinding
from expunge.orchestrator.config import TrackingConfig
from expunge.orchestrator.errors import ConfigError

__all__ = ["bind_tracking"]


def bind_tracking(
    recorded: RegistryBinding | None, given: TrackingConfig | None, tracking_uri: str | None, store_uri: str
) -> TrackingConfig:
    """The tracking settings for a job on a trained store.

    ``recorded`` is what the store's published version says it publishes to (set at training),
    ``given`` the job config's ``tracking`` (None when no config was given) and ``tracking_uri``
    a ``--tracking-uri`` override. Rules:

    - nothing recorded (trained with tracking off, or before this was recorded): the given
      settings, else the defaults;
    - recorded and nothing given: the recorded registry, so ``forget --storage URI`` updates the
      registry that serves this store rather than starting a second one;
    - a given model name or experiment that differs from the recorded one, or tracking switched
      off, is refused: it would leave the recorded registry's versions (which hold the subject)
      loadable;
    - a different tracking URI is refused too: the recorded registry would keep serving a
      version that holds the subject.

    Raises:
        ConfigError: the given model name, experiment or tracking URI differs from the recorded one, or the
            given config switches tracking off for a store that records a registry.
    """
    if recorded is None:
        tracking = given or TrackingConfig()
        return tracking.model_copy(update={"uri": tracking_uri}) if tracking_uri else tracking
    if given is not None and not given.enabled:
        raise ConfigError(
            f"the store {store_uri} publishes to MLflow model {recorded.model_name!r}, but the job config "
            "switches tracking off: an erasure would leave that model's versions, which still hold the subject, "
            "loadable. Remove `tracking.enabled: false`."
        )
    if given is not None:
        for field, mine, theirs in (
            ("model_name", given.model_name, recorded.model_name),
            ("experiment", given.experiment, recorded.experiment),
        ):
            if mine != theirs:
                raise ConfigError(
                    f"the store {store_uri} publishes to MLflow {field} {theirs!r}, but the job config names "
                    f"{mine!r}. Using another would leave {theirs!r}'s versions, which still hold the subject, "
                    f"loadable. Set tracking.{field}: {theirs!r} (or drop the tracking section to use the recorded one)."
                )
    uri = tracking_uri or (given.uri if given is not None and given.uri else None) or recorded.tracking_uri
    if uri.rstrip("/") != recorded.tracking_uri.rstrip("/"):
        # Another registry would get a new version while the recorded one, which serves this
        # store, kept loading a version that holds the subject.
        raise ConfigError(
            f"the store {store_uri} publishes to the MLflow registry at {recorded.tracking_uri}, but "
            f"{uri} was given. An erasure must purge the registry that serves the store: drop "
            "--tracking-uri (and tracking.uri) to use the recorded one. If the server moved, give its "
            "new address only once the old address no longer serves any version of this store."
        )
    base = given if given is not None else TrackingConfig()
    return base.model_copy(
        update={
            "uri": uri,
            "experiment": recorded.experiment,
            "model_name": recorded.model_name,
            "alias": recorded.alias,
        }
    )
