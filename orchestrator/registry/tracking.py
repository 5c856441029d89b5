"""The connection to MLflow: tracking URIs, the reachability probe, this deployment's experiment and
registered model, searches that never build filter strings from names, and tag names."""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from expunge.orchestrator.config import StorageConfig, TrackingConfig
from expunge.orchestrator.errors import ConfigError, TrackingUnreachable
from expunge.shards.store import ObjectStore

__all__ = [
    "ENDPOINT_TAG",
    "LOGGED_MODEL_TAG",
    "MANIFEST_TAG",
    "MODEL_NAME_TAG",
    "PURGED_BY_REQUEST",
    "REQUEST_TAG",
    "SUPERSEDES_ERASURE",
    "Registry",
    "artifacts_beside",
    "default_tracking_uri",
    "equals_filter",
    "local_folder",
    "same_store",
    "store_endpoint",
]

#: Bounds on each MLflow HTTP call (attempts, seconds); values already in ``os.environ`` win.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
#: MLflow prints "View run ..." and model links to stdout for a tracking server: the commands print JSON
#: there. Values already in ``os.environ`` win.
MLFLOW_QUIET_STDOUT = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "MLFLOW_PRINT_MODEL_URLS_ON_CREATION": "false"}

#: Version tag naming the erasure request whose commit purged the version's weights.
PURGED_BY_REQUEST = "expunge.purged_by_request"
#: Run and version tag naming the request (erasure or training) the run or version records.
REQUEST_TAG = "expunge.request_id"
#: Version tag of a training or ingest version published after an erasure MLflow never recorded
#: (an outage): the erasure's request id. That erasure's purge of every older version is done when
#: this version is registered, and finished by ``reconcile`` from this tag if interrupted.
SUPERSEDES_ERASURE = "expunge.supersedes_erasure"
#: MLflow's sqlite registry does not keep a version's model_id, so the version carries it as a tag.
LOGGED_MODEL_TAG = "expunge.logged_model_id"
#: LoggedModel tag naming the registered model it was logged for (finds orphans of interrupted records).
MODEL_NAME_TAG = "expunge.model_name"
#: Run and version tag beside ``expunge.storage`` for an S3 store: the endpoint it was reached at
#: (``store_endpoint``). Two S3 servers may each hold a bucket and prefix of the same name (a mirror of
#: production's bucket on a staging server), which ``expunge.storage`` alone cannot tell apart.
ENDPOINT_TAG = "expunge.storage_endpoint"
#: Version tag: the sha256 of the stored ensemble manifest the version was built from
#: (``Catalog.manifest_sha256``). Tells a store's own version from a copy's of the same number.
MANIFEST_TAG = "expunge.manifest_sha256"
#: ``ENDPOINT_TAG`` of an S3 store reached at AWS's own endpoint (no endpoint set).
AWS_ENDPOINT = "aws"
_AWS_URL = "https://s3.amazonaws.com"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_PROBE_TIMEOUT_S = 5.0
_PAGE = 1000


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    """``sqlite:///<dir>/mlflow.db``: MLflow's own default, made explicit."""
    base = Path(workdir) if workdir is not None else Path.cwd()
    return f"sqlite:///{base.resolve() / 'mlflow.db'}"


def artifacts_beside(uri: str) -> str | None:
    """``<db folder>/mlruns`` for a sqlite store: MLflow's default (``./mlruns``) depends on the cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()


def _probe(uri: str) -> None:
    """Ask a tracking server's ``/health`` once: MLflow's own client retries for minutes before failing."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 behind a proxy): reachable; MLflow reports what else is wrong
    except (OSError, ValueError) as exc:
        raise TrackingUnreachable(uri, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from exc


def equals_filter(key: str, value: str, parse: Callable[[str], list[dict[str, Any]]]) -> str | None:
    """``key = <value>`` in MLflow's filter grammar, or None when ``value`` cannot be written in it.

    MLflow strips one pair of quotes (single or double) and has no escapes, so a value is quoted
    with a kind it does not contain; the clause is then parsed with MLflow's own ``parse`` and
    kept only if it means exactly ``key == value``. Callers filter client-side on None.
    """
    for quote in ("'", '"'):
        if quote in value:
            continue
        clause = f"{key} = {quote}{value}{quote}"
        try:
            parsed = parse(clause)
        except Exception:  # MLflow's parser raises MlflowException and others on bad grammar
            continue
        if len(parsed) == 1 and parsed[0].get("comparator") == "=" and parsed[0].get("value") == value:
            return clause
    return None


def same_store(recorded: str, given: str) -> bool:
    """Do two store URIs name the same store? A local folder given as a relative, absolute, ``file://``
    or ``local://`` path, or reached by another path to the same folder (a bind mount: the same device
    and inode); an S3 prefix as ``s3://``, ``s3a://`` or ``s3n://``, with or without a trailing slash."""
    if recorded == given or _canonical(recorded) == _canonical(given):
        return True
    local = [local_folder(u) for u in (recorded, given)]
    return local[0] is not None and local[1] is not None and _same_folder(local[0], local[1])


def store_tag(uri: str) -> str:
    """The ``expunge.storage`` tag of a store URI: a local folder as its absolute, resolved path (so a
    copy elsewhere is told apart from it, whatever the cwd), an S3 prefix as ``s3://bucket/prefix``."""
    return _canonical(uri)


def stored_elsewhere(recorded: str, given: str, recorded_endpoint: str = "", given_endpoint: str = "") -> bool:
    """Does an ``expunge.storage`` tag (and ``ENDPOINT_TAG``) name another store than ``given`` (at
    ``given_endpoint``, ``store_endpoint``'s)? The same bucket and prefix on another S3 endpoint is another
    store. False where it cannot tell: no tag, a relative local path (recorded as typed before
    ``store_tag``, against an unknown cwd), or no endpoint recorded (a tag written before ``ENDPOINT_TAG``)."""
    if not recorded:
        return False
    if same_store(recorded, given):
        return bool(recorded_endpoint and given_endpoint and recorded_endpoint != given_endpoint)
    return "://" in recorded or Path(recorded).is_absolute()


def store_endpoint(storage: StorageConfig) -> str:
    """The ``ENDPOINT_TAG`` of ``storage``: for an S3 store the endpoint botocore reaches with its settings
    (``endpoint_url``, ``profile`` and ``region``, then the environment and the AWS config file, as s3fs
    resolves them) as ``scheme://host[:port]`` in lower case, a loopback host spelled 127.0.0.1, a
    scheme's default port left out, and ``"aws"`` for any of AWS's own; "" for a local store."""
    if urlparse(storage.uri).scheme not in ("s3", "s3a", "s3n"):
        return ""
    settings = tuple(os.environ.get(name, "") for name in _ENDPOINT_ENVIRONMENT)
    url = _resolved_endpoint(storage.profile, storage.region, storage.endpoint_url, settings)
    if url is None:  # botocore refused the settings (an unknown profile): the store fails on its own
        url = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return AWS_ENDPOINT
    parsed = urlparse(url if "://" in url else f"https://{url}")
    host = (parsed.hostname or "").lower()
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return AWS_ENDPOINT  # one bucket namespace, however the region's endpoint is spelled
    host = "127.0.0.1" if host in _LOOPBACK else (f"[{host}]" if ":" in host else host)
    scheme = parsed.scheme.lower()
    port = f":{parsed.port}" if parsed.port and (scheme, parsed.port) not in (("http", 80), ("https", 443)) else ""
    return f"{scheme}://{host}{port}{parsed.path.rstrip('/')}"


#: The environment botocore reads an S3 endpoint from (a key of ``_resolved_endpoint``'s cache).
_ENDPOINT_ENVIRONMENT = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


@functools.lru_cache(maxsize=64)
def _resolved_endpoint(
    profile: str | None, region: str | None, endpoint_url: str | None, environment: tuple[str, ...]
) -> str | None:
    """The endpoint URL of a botocore S3 client built from these settings (None: botocore refused them)."""
    import botocore.exceptions
    import botocore.session

    try:
        session = botocore.session.Session(profile=profile)
        client = session.create_client("s3", region_name=region, endpoint_url=endpoint_url)
    except (botocore.exceptions.BotoCoreError, ValueError):
        return None
    return str(client.meta.endpoint_url)


def endpoint_url(tag: str) -> str | None:
    """The ``StorageConfig.endpoint_url`` that reaches the S3 endpoint an ``ENDPOINT_TAG`` names (None: none named)."""
    if not tag:
        return None
    return _AWS_URL if tag == AWS_ENDPOINT else tag


def _canonical(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a", "s3n"):
        return f"s3://{parsed.netloc}{parsed.path}".rstrip("/")
    folder = local_folder(uri)
    return str(folder) if folder is not None else uri.rstrip("/")


def local_folder(uri: str) -> Path | None:
    """The absolute, resolved folder of a local store URI (a path, ``file://`` or ``local://``); None for S3."""
    parsed = urlparse(uri)
    if parsed.scheme in ("file", "local"):
        return Path(url2pathname(parsed.path)).resolve()
    return Path(uri).resolve() if uri and "://" not in uri else None


def _same_folder(left: Path, right: Path) -> bool:
    try:
        a, b = left.stat(), right.stat()
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    token = None
    while True:
        page = search(**kwargs, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


@dataclass(frozen=True)
class Registry:
    """Where one deployment's lineage lives: the client, its experiment and registered model, the shard store."""

    client: Any  # mlflow.MlflowClient (untyped)
    tracking: TrackingConfig
    uri: str
    backend_store_uri: str
    experiment_id: str
    artifact_root: str
    store: ObjectStore

    @property
    def model_name(self) -> str:
        return self.tracking.model_name

    @property
    def alias(self) -> str:
        return self.tracking.alias

    @property
    def store_uri(self) -> str:
        return self.store.uri

    @property
    def store_tag(self) -> str:
        """The store as the ``expunge.storage`` tag of every run and version names it (``store_tag``)."""
        return store_tag(self.store.uri)

    @property
    def store_endpoint(self) -> str:
        """The store's S3 endpoint as ``ENDPOINT_TAG`` names it ("" for a local store; ``store_endpoint``)."""
        return store_endpoint(self.store.config)

    @property
    def store_tags(self) -> dict[str, str]:
        """``expunge.storage`` and, for an S3 store, ``ENDPOINT_TAG``: the tags that place every run and version."""
        endpoint = self.store_endpoint
        return {"expunge.storage": self.store_tag, **({ENDPOINT_TAG: endpoint} if endpoint else {})}

    @classmethod
    def open(
        cls, tracking: TrackingConfig, storage: StorageConfig | str, check_root: Callable[[str], None]
    ) -> Registry:
        """Connect, and create the experiment and the registered model when they do not exist yet.

        ``check_root`` vets the experiment's artifact root (raising to refuse it) before any write.
        """
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # MLflow's own HTTP retries back off for minutes on a dead server, while Expunge retries the
        # registration itself (it is pending, never lost): keep each MLflow call short. Explicit
        # settings in the environment win.
        for name, value in {**MLFLOW_HTTP_DEFAULTS, **MLFLOW_QUIET_STDOUT}.items():
            os.environ.setdefault(name, value)
        from mlflow.exceptions import MlflowException

        from expunge.orchestrator.registry.prompt_check import RegistryClient

        uri = tracking.uri or default_tracking_uri()
        backend_store_uri = tracking.backend_store_uri or uri
        if backend_store_uri.startswith(("http://", "https://")):
            raise ConfigError(
                f"tracking.uri is the server {uri!r} but tracking.backend_store_uri is not set: purging "
                "erased subjects' model versions deletes LoggedModel records, which needs the server's own "
                "database. Set tracking.backend_store_uri to the URI the server was started with "
                "(--backend-store-uri)."
            )
        if uri.startswith(("http://", "https://")):
            _probe(uri)
        client = RegistryClient(tracking_uri=uri)
        store = ObjectStore(storage)
        try:
            experiment = client.get_experiment_by_name(tracking.experiment)
        except MlflowException as exc:
            raise TrackingUnreachable(uri, str(exc).splitlines()[0][:300]) from exc
        if experiment is not None:
            experiment_id, artifact_root = str(experiment.experiment_id), str(experiment.artifact_location)
            check_root(artifact_root)
        else:
            wanted = tracking.artifact_location or artifacts_beside(uri)
            if wanted is not None:
                check_root(wanted)  # before the experiment exists: a refused root leaves nothing behind
            experiment_id = str(client.create_experiment(tracking.experiment, artifact_location=wanted))
            artifact_root = str(client.get_experiment(experiment_id).artifact_location)
            if wanted is None:
                check_root(artifact_root)  # the server's default root, known only now
        try:
            client.get_registered_model(tracking.model_name)
        except MlflowException:
            client.create_registered_model(
                tracking.model_name,
                description="Expunge SISA ensemble; one version per training or erasure commit. Load "
                f"models:/{tracking.model_name}@{tracking.alias} with mlflow.pyfunc.load_model.",
            )
        return cls(client, tracking, uri, backend_store_uri, experiment_id, artifact_root, store)

    # ----- searches (no name is ever pasted into a filter string unchecked) --------------------------
    def model_versions(self, since: int = 1) -> list[Any]:
        """The versions of this deployment's registered model numbered ``since`` or later (default: all).

        A search reads every version it matches with its tags: ``since`` keeps the ones known to
        need nothing (purged earlier) out of it.
        """
        from mlflow.utils.search_utils import SearchModelVersionUtils

        clause = equals_filter("name", self.model_name, SearchModelVersionUtils.parse_search_filter)
        if clause is not None and since > 1:
            clause = f"{clause} AND version_number >= {int(since)}"
        found = _pages(self.client.search_model_versions, filter_string=clause, max_results=_PAGE)
        # Client-side too: when clause is None, every registered model's versions came back.
        return [v for v in found if v.name == self.model_name and int(v.version) >= since]

    def aliases(self) -> dict[str, tuple[str, ...]]:
        """Registry version -> the aliases pointing at it (versions without one are absent).

        From the registered model: ``search_model_versions`` leaves every version's ``aliases`` empty.
        """
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return {}
        found: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            found.setdefault(str(version), []).append(str(alias))
        return {version: tuple(sorted(names)) for version, names in found.items()}

    def running_runs(self) -> list[Any]:
        """Runs of this experiment still marked RUNNING (interrupted, or being written right now)."""
        return list(
            _pages(
                self.client.search_runs,
                experiment_ids=[self.experiment_id],
                filter_string="attributes.status = 'RUNNING'",
                max_results=_PAGE,
            )
        )

    def logged_models(self) -> list[Any]:
        """Active LoggedModels of this experiment that were logged for this registered model."""
        found = _pages(self.client.search_logged_models, experiment_ids=[self.experiment_id], max_results=_PAGE)
        return [m for m in found if m.tags.get(MODEL_NAME_TAG) == self.model_name]
