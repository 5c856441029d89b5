"""The ensemble manifest (which shard versions form the published model) and the placement index."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from expunge.orchestrator.config import ModelConfig, ShardingConfig, TrainingConfig
from expunge.orchestrator.training.placement import Cell
from expunge.shards.errors import ConfigError, StorageConflictError, StorageCorruptError
from expunge.shards.manifest import ShardManifest, shard_prefix
from expunge.shards.store import ObjectInfo, ObjectStore

__all__ = [
    "INGEST_RECEIPT_PREFIX",
    "STAGING_PREFIX",
    "Catalog",
    "EnsembleManifest",
    "PlacementIndex",
    "RegistryBinding",
    "TombstoneEntry",
    "require_published",
]

log = logging.getLogger(__name__)

_ENSEMBLE_PREFIX = "ensemble"
_TOMBSTONE_PREFIX = "tombstones"
_REQUEST_RECEIPT_PREFIX = "receipts/requests"
#: Where the receipt of every ingest is kept, by request id (``expunge.orchestrator.ingest``).
INGEST_RECEIPT_PREFIX = "receipts/ingests"
#: Where streamed training stages each shard's raw rows until the shards have trained (then deleted).
STAGING_PREFIX = "staging/"
_APPEND_ATTEMPTS = 20
_PLACEMENTS_KEPT = 4
_PLACEMENT_SCHEMA = pa.schema(
    [("subject_digest", pa.string()), ("shard", pa.int32()), ("slice", pa.int32()), ("rows", pa.int64())]
)


class RegistryBinding(BaseModel):
    """The MLflow registry a store publishes to (no secrets: a URI, an experiment and a model name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tracking_uri: str
    experiment: str
    model_name: str
    alias: str


class TombstoneEntry(BaseModel):
    """One append-only entry of a store's tombstone log: digests erased, or re-admitted with a reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sequence: int
    action: Literal["erased", "readmitted"]
    subject_digests: tuple[str, ...]
    request_id: str
    reason: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    #: For an erasure, the rows each subject had when it was erased (aligned with ``subject_digests``); where an
    #: ingest joined its commit (adding rows to the same shards), that ingest's request id and each retrained
    #: shard's rows removed: the durable facts receipts are rebuilt from after a crash (``erasure.resume``).
    rows: tuple[int, ...] = ()
    shard_rows: dict[int, int] = Field(default_factory=dict)
    joined_ingest: str | None = None
    ticket: str | None = None  # an erasure's requester's reference (its ``reason`` above), screened like receipts'


class EnsembleManifest(BaseModel):
    """The commit point: publishing a new one makes a new model version visible as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format_version: int = 1
    version: int
    parent_version: int | None
    #: What made this version: a training from scratch, an erasure, or an ingest of new rows.
    kind: Literal["train", "erasure", "ingest"]
    request_id: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    sharding: ShardingConfig
    training: TrainingConfig
    model: ModelConfig  # resolved (e.g. num_items filled in)
    shard_versions: tuple[int, ...]
    placement_key: str
    rows: int
    # SubjectHasher.key_check() of the key the digests were made with (None: not recorded).
    key_check: str | None = None
    #: Where this store publishes model versions (recorded at training, carried by erasures);
    #: None when tracking was off. Jobs use it when no tracking is given and refuse another name.
    registry: RegistryBinding | None = None
    #: Rows of tombstoned (erased) subjects left out of the training data of this version's
    #: last full training (``data.erased_subjects: drop``); 0 when none were present.
    erased_rows_dropped: int = 0
    #: Wall time, in seconds, of the parallel training phase of the last from-scratch training of
    #: every shard (actors already started); carried forward by erasures. The baseline of
    #: ``ErasureReceipt.speedup``.
    train_seconds: float = 0.0
    #: CPU time of that training, summed over the shard actors, in seconds; carried forward by
    #: erasures. The baseline of ``ErasureReceipt.cpu_speedup``. 0 when not recorded.
    train_cpu_seconds: float = 0.0
    #: The write lease token (``expunge.orchestrator.lease``) of the process that published this
    #: version; None when published without one (stores from before leases).
    lease_token: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_optimizer_kernel(cls, data: Any) -> Any:
        """A version written before ``training.optimizer_kernel`` existed was trained with ``per_tensor``."""
        training = data.get("training") if isinstance(data, dict) else None
        if isinstance(training, dict) and "optimizer_kernel" not in training:
            return {**data, "training": {**training, "optimizer_kernel": "per_tensor"}}
        return data


class PlacementIndex:
    """Subject digest -> cells holding its rows (one cell in subject-aware modes) with row counts.

    Read-only (``entries`` and its cell maps are mapping proxies): a catalog shares the index it
    read or wrote with every reader, so a change would reach them all. Derive a new index
    (``without``, or ``PlacementIndex({...})`` from copies) instead.
    """

    def __init__(self, entries: Mapping[str, Mapping[Cell, int]], table: pa.Table | None = None) -> None:
        """``table``: ``entries`` as ``to_table`` gives them, when known (read from the store, or filtered from one)."""
        self.entries: Mapping[str, Mapping[Cell, int]] = MappingProxyType(
            {d: c if isinstance(c, MappingProxyType) else MappingProxyType(dict(c)) for d, c in entries.items()}
        )
        self._table = table

    @classmethod
    def from_assignment(cls, digests: list[str], cells: list[Cell]) -> PlacementIndex:
        entries: dict[str, dict[Cell, int]] = defaultdict(dict)
        for digest, cell in zip(digests, cells, strict=True):
            entries[digest][cell] = entries[digest].get(cell, 0) + 1
        return cls(dict(entries))

    def cells(self, digests: Iterable[str] | None = None) -> dict[str, list[Cell]]:
        """Subject digest -> its cells, sorted; ``digests``: only those subjects (the ones held)."""
        if digests is None:
            return {d: sorted(c) for d, c in self.entries.items()}
        return {d: sorted(self.entries[d]) for d in digests if d in self.entries}

    def home_cells(self) -> dict[str, Cell]:
        return {d: min(c) for d, c in self.entries.items()}

    def rows(self) -> dict[str, int]:
        return {d: sum(c.values()) for d, c in self.entries.items()}

    def without(self, digests: set[str]) -> PlacementIndex:
        entries = {d: c for d, c in self.entries.items() if d not in digests}
        if self._table is None or not digests:
            return PlacementIndex(entries, self._table)
        # The same rows in the same order as to_table of ``entries``: a commit filters, it does not rebuild.
        gone = pc.is_in(self._table.column("subject_digest"), value_set=pa.array(sorted(digests), pa.string()))
        return PlacementIndex(entries, self._table.filter(pc.invert(gone)).combine_chunks())

    def to_table(self) -> pa.Table:
        if self._table is not None:
            return self._table
        rows = [
            (d, cell.shard, cell.slice, n) for d in sorted(self.entries) for cell, n in sorted(self.entries[d].items())
        ]
        columns = zip(*rows, strict=True) if rows else ([], [], [], [])
        return pa.table(
            [pa.array(list(c), f.type) for c, f in zip(columns, _PLACEMENT_SCHEMA, strict=True)],
            schema=_PLACEMENT_SCHEMA,
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> PlacementIndex:
        entries: dict[str, dict[Cell, int]] = defaultdict(dict)
        for d, s, k, n in zip(
            *(table.column(c).to_pylist() for c in ("subject_digest", "shard", "slice", "rows")), strict=True
        ):
            entries[d][Cell(s, k)] = n
        canonical = table.select(list(_PLACEMENT_SCHEMA.names))
        return cls(dict(entries), canonical.combine_chunks() if canonical.schema.equals(_PLACEMENT_SCHEMA) else None)


_Parsed = TypeVar("_Parsed", bound=BaseModel)


def _parse(model: type[_Parsed], store: ObjectStore, key: str) -> _Parsed:
    """Read a JSON object of the store; a truncated or foreign one is a typed error naming it."""
    data = store.get(key)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise StorageCorruptError(
            f"object {store.url(key)} is not a valid {model.__name__} ({exc.error_count()} problem(s), first: "
            f"{exc.errors()[0]['msg']}); it is truncated, edited or written by another version of Expunge. "
            "Nothing was changed. Restore the object from backup (on a versioned bucket: its previous "
            "version), or retrain into a fresh storage URI."
        ) from exc


def _number(key: str) -> int:
    """The version number in a manifest's key (``ensemble/00000012.json`` -> 12)."""
    return int(key.rsplit("/", 1)[1].split(".")[0])


class Catalog:
    """Reads and publishes ensemble manifests and placement indexes in one store."""

    def __init__(self, store: ObjectStore, fence: Callable[[], object] | None = None) -> None:
        self.store = store
        #: Called before every commit (manifest publish, tombstone append); raises to refuse it
        #: (``StoreLease.check``: this process must still hold the newest lease token).
        self.fence = fence
        #: Parsed immutable JSON objects (manifests, tombstone entries) by key, with the listed
        #: (size, modified, tag) they were parsed at: a commit reads each object once, not once per commit.
        self._parsed: dict[str, tuple[tuple[int, datetime, str], BaseModel]] = {}
        #: Placement indexes by key (content-addressed), newest last: the one a commit wrote is the one the next reads.
        self._placements: dict[str, PlacementIndex] = {}
        self._kept = threading.Lock()  # the service's threads share a catalog
        self._tombstone_head: int | None = None  # the newest tombstone sequence this catalog listed or wrote
        self._ensemble_head: int | None = None  # the newest ensemble version this catalog listed (``latest``)

    def _listed(self, model: type[_Parsed], info: ObjectInfo) -> _Parsed:
        """``info``'s object parsed, from the cache while its size and time are the listed ones."""
        seen = self._parsed.get(info.key)
        if seen is not None and seen[0] == (info.size, info.modified, info.tag) and isinstance(seen[1], model):
            return seen[1]
        parsed = _parse(model, self.store, info.key)
        with self._kept:
            self._parsed[info.key] = ((info.size, info.modified, info.tag), parsed)
        return parsed

    def _key(self, version: int) -> str:
        return f"{_ENSEMBLE_PREFIX}/{version:08d}.json"

    def versions(self) -> list[int]:
        return [_number(k) for k in self.store.list_keys(_ENSEMBLE_PREFIX) if k.endswith(".json")]

    def latest(self) -> EnsembleManifest | None:
        """The newest published ensemble manifest; None before the first. A local store is listed once per
        catalog, then followed forward from the newest version this catalog saw: versions are numbered
        without gaps (each commit creates ``version + 1`` exclusively, none is ever deleted), so the next
        number absent means none newer; a newest version gone is listed again (a listing of every manifest
        grew with each commit). A gap made by hand is not looked past; ``publish`` lists once, so that
        nothing is published into one."""
        head = self._ensemble_head if self.store.local else None
        if head is not None:
            try:
                info = self.store.info(self._key(head))
            except StorageCorruptError:  # gone: listed again below
                pass
            else:
                while self.store.exists(self._key(head + 1)):
                    head += 1
                    info = self.store.info(self._key(head))
                self._ensemble_head = head
                return self._listed(EnsembleManifest, info)
        listed = [k for k in self.store.list_keys(_ENSEMBLE_PREFIX) if k.endswith(".json")]
        if not listed:
            return None
        newest = max(listed, key=_number)
        self._ensemble_head = _number(newest)
        return self._listed(EnsembleManifest, self.store.info(newest))

    def has(self, version: int) -> bool:
        """True when ensemble version ``version`` is published (and not purged)."""
        return self.store.exists(self._key(version))

    def manifest_sha256(self, version: int) -> str:
        """The sha256 of ensemble manifest ``version``'s stored bytes: which store made it (two stores that
        share a past hold the same bytes; once they went apart, their versions differ even where numbered alike)."""
        return hashlib.sha256(self.store.get(self._key(version))).hexdigest()

    def read(self, version: int) -> EnsembleManifest:
        return _parse(EnsembleManifest, self.store, self._key(version))

    def shard_manifest(self, shard_id: int, version: int) -> ShardManifest:
        return _parse(ShardManifest, self.store, f"{shard_prefix(shard_id)}/manifests/{version:08d}.json")

    def referenced_keys(self, manifest: EnsembleManifest) -> set[str]:
        """Every data object a published version needs: its placement, slices and checkpoints."""
        keys = {manifest.placement_key}
        for shard_id, version in enumerate(manifest.shard_versions):
            keys |= self.shard_manifest(shard_id, version).object_keys()
        return keys

    def published_at(self, version: int) -> datetime:
        """The store's own timestamp of a published manifest (same clock as its objects)."""
        return self.store.info(self._key(version)).modified

    def publish(self, manifest: EnsembleManifest) -> None:
        """Exclusive create: a concurrent publisher of the same version gets ``StorageConflictError``;
        ``LeaseLostError`` when ``fence`` refused (this process no longer holds the store's lease)."""
        if self.fence is not None:
            self.fence()
        # A local ``latest`` follows numbers forward: past a gap (a manifest deleted by hand) it misses newer
        # versions, and a commit into the gap would hide behind them. One listing here refuses that (S3 lists).
        newest = max(self.versions(), default=0) if self.store.local else 0
        if newest > manifest.version:
            self._ensemble_head = None  # the next ``latest`` lists
            raise StorageConflictError(
                f"ensemble version {newest} already exists in {self.store.uri}, so version {manifest.version} "
                "is not the next one (an earlier version was deleted by hand?); nothing was published. Submit "
                "the request again: it is planned on the newest version."
            )
        self.store.create_exclusive(self._key(manifest.version), manifest.model_dump_json(indent=1).encode())
        self._ensemble_head = manifest.version if self.store.local else None
        log.info("published ensemble version %d (%s)", manifest.version, manifest.kind)

    # ----- tombstones: the digests of everyone erased, so that no later training brings them back ----
    def _tombstone_entries(self) -> list[TombstoneEntry]:
        listed = [i for i in self.store.list_info(_TOMBSTONE_PREFIX) if i.key.endswith(".json")]
        entries = [self._listed(TombstoneEntry, info) for info in listed]
        self._tombstone_head = max((e.sequence for e in entries), default=0)
        return entries

    def tombstone_log(self) -> list[TombstoneEntry]:
        """Every entry of the tombstone log, in order (erasures and re-admissions, digests only)."""
        return sorted(self._tombstone_entries(), key=lambda e: e.sequence)

    def tombstones(self) -> set[str]:
        """Digests of every erased subject not re-admitted since (the log folded in order)."""
        current: set[str] = set()
        for entry in sorted(self._tombstone_entries(), key=lambda e: e.sequence):
            if entry.action == "erased":
                current |= set(entry.subject_digests)
            else:
                current -= set(entry.subject_digests)
        return current

    def append_tombstones(
        self,
        action: Literal["erased", "readmitted"],
        digests: Sequence[str],
        request_id: str,
        reason: str | None = None,
        rows: Mapping[str, int] | None = None,
        shard_rows: Mapping[int, int] | None = None,
        joined_ingest: str | None = None,
        ticket: str | None = None,
    ) -> TombstoneEntry:
        """Append one entry with an exclusive create (two writers never share a sequence number)."""
        if self.fence is not None:
            self.fence()
        for attempt in range(_APPEND_ATTEMPTS):
            # First after the newest entry this catalog saw (no listing); after a conflict, after the listed newest.
            head = self._tombstone_head if attempt == 0 else None
            if head is None:
                head = max((e.sequence for e in self._tombstone_entries()), default=0)
            ordered = tuple(sorted(set(digests)))
            entry = TombstoneEntry(
                sequence=head + 1,
                action=action,
                subject_digests=ordered,
                request_id=request_id,
                reason=reason,
                rows=tuple(rows.get(d, 0) for d in ordered) if rows is not None else (),
                shard_rows=dict(shard_rows or {}),
                joined_ingest=joined_ingest,
                ticket=ticket,
            )
            unset = {k for k in ("shard_rows", "joined_ingest", "ticket") if not getattr(entry, k)}  # earlier lack them
            try:
                text = entry.model_dump_json(indent=1, exclude=unset)
                self.store.create_exclusive(f"{_TOMBSTONE_PREFIX}/{entry.sequence:08d}.json", text.encode())
            except StorageConflictError:
                continue  # another writer took this sequence number: read again, take the next
            self._tombstone_head = entry.sequence
            return entry
        raise StorageConflictError(
            f"could not append to the tombstone log of {self.store.uri} after {_APPEND_ATTEMPTS} attempts "
            "(many concurrent writers); nothing was changed, submit the request again"
        )

    # ----- receipts: every request leaves one, found or not ----------------------------------------
    def write_request_receipt(self, request_id: str, receipt_json: str) -> str:
        """Keep the receipt of a request under its id (digests only); returns the key."""
        key = f"{_REQUEST_RECEIPT_PREFIX}/{request_id}.json"
        self.store.put(key, receipt_json.encode())
        return key

    def read_request_receipt(self, request_id: str) -> str | None:
        key = f"{_REQUEST_RECEIPT_PREFIX}/{request_id}.json"
        return self.store.get(key).decode() if self.store.exists(key) else None

    def write_ingest_receipt(self, request_id: str, receipt_json: str) -> str:
        """Keep the receipt of an ingest under its request id (counts and keyed digests only); returns the key."""
        key = f"{INGEST_RECEIPT_PREFIX}/{request_id}.json"
        self.store.put(key, receipt_json.encode())
        return key

    def read_ingest_receipt(self, request_id: str) -> str | None:
        key = f"{INGEST_RECEIPT_PREFIX}/{request_id}.json"
        return self.store.get(key).decode() if self.store.exists(key) else None

    def _receipt_key(self, version: int) -> str:
        return f"receipts/{version:08d}.json"

    def write_receipt(self, version: int, receipt_json: str) -> None:
        """Keep the receipt of the erasure that produced ``version`` (digests only, no raw ids)."""
        self.store.put(self._receipt_key(version), receipt_json.encode())

    def read_receipt(self, version: int) -> str | None:
        key = self._receipt_key(version)
        return self.store.get(key).decode() if self.store.exists(key) else None

    def write_placement(self, index: PlacementIndex) -> str:
        sink = io.BytesIO()
        # zstd codes the hex digests at about half their text size (snappy, the default, does not).
        pq.write_table(index.to_table(), sink, compression="zstd", write_statistics=False)
        data = sink.getvalue()
        key = f"placement/{hashlib.sha256(data).hexdigest()[:40]}.parquet"
        self.store.put(key, data)
        self._keep_placement(key, index)
        return key

    def read_placement(self, key: str) -> PlacementIndex:
        """The placement index under ``key`` (kept: a key names its content, and a commit reads the last one
        written). Treat the result as read-only: it is shared by every reader of this catalog."""
        index = self._placements.get(key)
        if index is None:
            index = PlacementIndex.from_table(pq.read_table(io.BytesIO(self.store.get(key))))
            self._keep_placement(key, index)
        return index

    def _keep_placement(self, key: str, index: PlacementIndex) -> None:
        with self._kept:
            self._placements.pop(key, None)
            self._placements[key] = index
            while len(self._placements) > _PLACEMENTS_KEPT:
                del self._placements[next(iter(self._placements))]


def require_published(catalog: Catalog) -> EnsembleManifest:
    """The published version (ConfigError: the store does not exist or was never trained; never read as empty)."""
    if (latest := catalog.latest()) is None:
        raise ConfigError(
            f"no published ensemble in {catalog.store.uri}: the store does not exist or was never trained. "
            "Check --storage (a local folder, file:// or s3:// URI of a trained store), or run `expunge train`."
        )
    return latest
