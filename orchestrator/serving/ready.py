"""Ready to serve: the exact solve of each new version of a statistics model, built in the background, swapped whole.

After a commit the service asks for the new version at once (``ReadyFits.request``); one
background thread reads the version's shard states, sums them and fits them
(``StatisticsEnsemble``: the same code, data and bits as a from-scratch solve), and only then
replaces the served model with one reference assignment. Readers take that reference once per
call, so they see the previous model or the new one, never a model being built. Until the new
one is ready, the subjects erased since the served version are masked: they get no personal
answer (``recommend`` refuses them, ``predict`` gives them the population's score), while
everyone else is answered by the previous exact model.

Reuse, cheapest first:

- A version that a pure erasure made from the last solved one (the commit says so:
  ``request(..., erased_from=)``; a chain of them counts too), of a model whose state keeps each
  subject's rows (``SubjectStatisticsModel``: ``item_stats``): the sum is the last solved sum
  without the erased subjects' contributions, rebuilt from that sum (``without_subjects``). No
  checkpoint is read. It is taken only when the shards whose versions changed are exactly the
  shards that held those subjects in the last solved version; otherwise the path below runs.
- Otherwise a shard's decoded state is kept while its shard version stays published (an erasure
  changes one or a few shards), so only the changed checkpoints are read and decoded again; and
  for a model that subtracts exactly (``DecrementalStatisticsModel``) the sum is the last solved
  version's sum with the changed shards' old states taken out and their new ones put in (for
  ``item_stats``, only the subjects whose cells changed: ``changed_parts``).

Either is bit for bit the sum from scratch (exact arithmetic: the order and grouping of the
additions do not matter). The fit's solves run in full, as from scratch; a model with ``refit``
(``item_stats``) keeps each fit's dense matrices, and the fit of a subtracted sum rewrites them on
the erased subjects' items only (``Refit``): the same bits, without rebuilding them from every pair.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from expunge.orchestrator.catalog import Catalog, EnsembleManifest
from expunge.orchestrator.errors import ConfigError, ExpungeError, StorageCorruptError, UnknownSubjectError
from expunge.orchestrator.serving.ensemble import Refit, StatisticsEnsemble
from expunge.orchestrator.serving.solve_gate import SolveGate
from expunge.shards.models import (
    DecrementalStatisticsModel,
    StatisticsFit,
    SubjectStatisticsModel,
    SufficientStatisticsModel,
    model_for,
)
from expunge.shards.niceness import favoured_thread
from expunge.shards.rows import SUBJECT_DIGEST
from expunge.shards.store import ObjectStore
from expunge.shards.training import load_checkpoint

__all__ = ["ReadyFits", "ServedStatistics", "Solve", "is_statistics_model", "solve_from_scratch"]

log = logging.getLogger(__name__)

#: How a version's summed states become a fit: ``StatisticsEnsemble`` (tests slow it down to watch the swap).
#: Called as ``solve(model, states)``, with ``refit=Refit(...)`` added when it takes that keyword.
Solve = Callable[..., StatisticsEnsemble]
_RETRY_PAUSE_S = 1.0


def is_statistics_model(manifest: EnsembleManifest) -> bool:
    """True when ``manifest``'s model is served from summed statistics (``item_stats``), not from shard actors."""
    return isinstance(model_for(manifest.model), SufficientStatisticsModel)


def _checkpoint(store: ObjectStore, catalog: Catalog, shard: int, version: int) -> bytes:
    checkpoints = catalog.shard_manifest(shard, version).checkpoints
    if not checkpoints:
        raise StorageCorruptError(
            f"shard {shard} manifest v{version} in {store.uri} lists no checkpoint; retrain into a fresh storage URI"
        )
    return store.get(checkpoints[-1].key)


def solve_from_scratch(store: ObjectStore, manifest: EnsembleManifest) -> StatisticsEnsemble:
    """The exact solve of ``manifest`` with nothing reused: read every shard's final checkpoint, sum, fit.

    What ``LiveEnsemble.statistics`` computes on the first call after a commit, and what the
    benchmark times alone as the reference for ``ready_to_serve``.

    Raises:
        StorageCorruptError: a shard version lists no checkpoint, or one does not decode.
        ConfigError: the model is not a statistics model.
    """
    model = model_for(manifest.model)
    if not isinstance(model, SufficientStatisticsModel):
        raise ConfigError(f"ensemble v{manifest.version} is a {manifest.model.kind!r} model, not a statistics model")
    catalog = Catalog(store)
    states = [
        load_checkpoint(model, _checkpoint(store, catalog, shard, version)).module
        for shard, version in enumerate(manifest.shard_versions)
    ]
    return StatisticsEnsemble(model, states)


@dataclass(frozen=True)
class _Erasure:
    """A version a commit made from ``parent`` by erasing ``subjects`` and nothing else (no rows added)."""

    parent: int
    subjects: frozenset[str]


@dataclass(frozen=True)
class _Base:
    """The last solved version: what the next sum starts from."""

    version: int
    keys: list[tuple[int, int]]  # (shard, shard version), by shard
    total: torch.nn.Module  # the summed state
    fit: StatisticsFit  # its fit (a refit, when the model has one: the next solve may start from it)
    states: dict[tuple[int, int], torch.nn.Module]  # decoded shard states still current (after a subtraction: some)
    owners: dict[str, int] | None  # subject digest -> shard holding its rows (``SubjectStatisticsModel`` only)


@dataclass(frozen=True)
class ServedStatistics:
    """One exact model being served: its version, its fit, and the subjects erased since (masked)."""

    version: int
    manifest: EnsembleManifest
    ensemble: StatisticsEnsemble
    masked: frozenset[str] = field(default_factory=frozenset)

    def recommend(self, subject_digest: str, k: int, store_uri: str) -> list[int]:
        """``k`` best unrated items for the subject, best first (as ``LiveEnsemble.recommend``).

        Raises:
            ConfigError: ``k`` is not a whole number of at least 1.
            UnknownSubjectError: the model holds no rows of the subject, or they were erased since.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k={k!r}: ask for a whole number of recommendations, at least 1")
        fit = self.ensemble.fit
        if subject_digest in self.masked or not fit.knows(subject_digest):
            raise UnknownSubjectError(
                f"subject {subject_digest[:12]}... (digest) has no rows in ensemble v{self.version} of {store_uri}: "
                "recommendations need a subject the model holds (never trained on, or erased). Check the id and "
                "EXPUNGE_SUBJECT_KEY, or use popular items for newcomers."
            )
        return fit.recommend(subject_digest, k)

    def predict(self, rows: pa.Table) -> np.ndarray:
        """Scores for canonical rows (``item_id``, ``subject_digest``); masked subjects get the population's."""
        if self.masked and SUBJECT_DIGEST in rows.column_names:
            digests = ["" if d in self.masked else d for d in rows.column(SUBJECT_DIGEST).to_pylist()]
            rows = rows.set_column(rows.column_names.index(SUBJECT_DIGEST), SUBJECT_DIGEST, pa.array(digests))
        return self.ensemble.fit.predict(rows)


class ReadyFits:
    """Solves each requested version in one background thread; ``served()`` is the newest one solved.

    ``on_ready(version, seconds)`` is called after each swap (``seconds``: the solve's wall time).
    ``gate``: held while the solve decodes the changed checkpoints and updates the sum (its
    GIL-bound phases), so that threads that pass it (``SolveGate.yield_to_solve``) wait for them.
    Requests coalesce: a solve always takes the newest version asked for, so under a stream of
    commits the served model trails by at most one solve plus the one under way.
    """

    def __init__(
        self,
        store: ObjectStore,
        on_ready: Callable[[int, float], None] | None = None,
        solve: Solve = StatisticsEnsemble,
        gate: SolveGate | None = None,
        niceness: int | None = None,
    ) -> None:
        self._store = store
        self._niceness = niceness  # the solve thread's (``favoured_thread``); None: the process's
        self.gate = gate if gate is not None else SolveGate()
        self._catalog = Catalog(store)  # a reader of its own: the writer's catalog is the commit thread's
        self._on_ready = on_ready
        self._solve = solve
        self._changed = threading.Condition()
        self._target: EnsembleManifest | None = None
        self._served: ServedStatistics | None = None
        self._erased: dict[int, frozenset[str]] = {}  # version -> subjects its commit erased
        self._erasures: dict[int, _Erasure] = {}  # version -> the pure erasure that made it (not yet served)
        self._states: dict[tuple[int, int], torch.nn.Module] = {}  # (shard, shard version) -> decoded state
        self._base: _Base | None = None  # the last solved version
        #: How each version's sum was made (tests, benchmarks): every shard summed, changed shards
        #: read and summed in, or versions summed by taking erased subjects out of the last sum.
        self.sums = {"full": 0, "changed_shards": 0, "subtracted": 0}
        #: How each solve's fit got its dense inputs (a model with ``refit``): carried over, or built.
        self.fit_inputs = {"carried": 0, "built": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="expunge-ready", daemon=True)
        self._thread.start()

    def request(self, manifest: EnsembleManifest, erased: Iterable[str] = (), erased_from: int | None = None) -> None:
        """Solve ``manifest`` (newly published) as soon as the thread is free; ``erased``: its commit's subjects.

        Those subjects are masked in the served model at once (``mask``), until a version without
        them is served. ``erased_from``: the version the commit made ``manifest`` from by erasing
        ``erased`` and nothing else (no rows added; digests it did not find may be among them).
        Then the solve may take them out of that version's sum instead of reading the changed
        shards; give None when unsure (an ingest joined, a resumed commit).
        """
        gone = frozenset(erased)
        with self._changed:
            if self._target is None or manifest.version > self._target.version:
                self._target = manifest
            if erased_from is not None and erased_from < manifest.version:
                self._erasures[manifest.version] = _Erasure(erased_from, gone)
            self._mask(manifest.version, gone)
            self._changed.notify_all()

    def mask(self, version: int, erased: Iterable[str]) -> None:
        """Mask ``erased`` (committed in ``version``) in the served model now, before anyone is told so.

        No personal answer for them from an older version from this call on; the solve of
        ``version`` is started by ``request``.
        """
        with self._changed:
            self._mask(version, frozenset(erased))

    def _mask(self, version: int, gone: frozenset[str]) -> None:
        if not gone:
            return
        self._erased[version] = self._erased.get(version, frozenset()) | gone
        served = self._served
        if served is not None and served.version < version:
            self._served = ServedStatistics(served.version, served.manifest, served.ensemble, served.masked | gone)

    def served(self) -> ServedStatistics | None:
        """The model served now (None until the first solve is done): one read of one reference."""
        return self._served

    def wait(self, version: int, timeout: float | None = None) -> bool:
        """Block until a version at least ``version`` is served; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._served is None or self._served.version < version:
                left = None if deadline is None else deadline - time.monotonic()
                if self._closed or (left is not None and left <= 0):
                    return False
                self._changed.wait(left)
            return True

    def close(self) -> None:
        """Stop the thread after the solve under way (its result is dropped)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=60)

    def _next(self) -> EnsembleManifest | None:
        with self._changed:
            while not self._closed:
                target, served = self._target, self._served
                if target is not None and (served is None or target.version > served.version):
                    return target
                self._changed.wait()
            return None

    def _run(self) -> None:
        if self._niceness is not None:
            favoured_thread(self._niceness, "the ready solve")
        while (manifest := self._next()) is not None:
            began = time.perf_counter()
            try:
                ensemble = self._solve_version(manifest)
            except (ExpungeError, OSError, ValueError) as exc:
                published = self._published_after(manifest) if isinstance(exc, StorageCorruptError) else False
                with self._changed:
                    if self._target is None or self._target.version <= manifest.version:
                        if not published:  # a store that did not answer: tried again (the previous model serves)
                            log.warning("solving ensemble v%d failed (%s); trying again", manifest.version, exc)
                        self._changed.wait(_RETRY_PAUSE_S)  # published: the newer version's request wakes it
                continue  # superseded: its objects may be purged already; the newer version is solved next
            except Exception:  # the thread must outlive a bug in one solve; the previous model keeps serving
                log.exception("solving ensemble v%d hit an unexpected error; trying again", manifest.version)
                time.sleep(_RETRY_PAUSE_S)
                continue
            seconds = time.perf_counter() - began
            with self._changed:
                if self._closed:
                    return
                masked = frozenset().union(*(d for v, d in self._erased.items() if v > manifest.version))
                self._served = ServedStatistics(manifest.version, manifest, ensemble, masked)  # the swap
                self._erased = {v: d for v, d in self._erased.items() if v > manifest.version}
                self._erasures = {v: e for v, e in self._erasures.items() if v > manifest.version}
                self._changed.notify_all()
            carried = bool(getattr(ensemble.fit, "carried", False))
            self.fit_inputs["carried" if carried else "built"] += 1
            how = "; fit carried over" if carried else ""
            log.info("ensemble v%d ready to serve (solved in %.2f s%s)", manifest.version, seconds, how)
            if self._on_ready is not None:
                self._on_ready(manifest.version, seconds)

    def _published_after(self, manifest: EnsembleManifest) -> bool:
        """Whether the store publishes a newer version than ``manifest`` (whose objects a commit may have purged).

        The commit worker purges before it asks for the new version's solve: a read that failed
        in between is a superseded version, not a damaged store.
        """
        try:
            latest = self._catalog.latest()
        except ExpungeError:
            return False
        return latest is not None and latest.version > manifest.version

    def _solve_version(self, manifest: EnsembleManifest) -> StatisticsEnsemble:
        """The exact solve of ``manifest``, reusing the last solved sum and the shard states it shares with it."""
        model = model_for(manifest.model)
        if not isinstance(model, SufficientStatisticsModel):
            raise ConfigError(
                f"ensemble v{manifest.version} is a {manifest.model.kind!r} model, not a statistics model"
            )
        keys = list(enumerate(manifest.shard_versions))
        owners: dict[str, int] | None
        # After the last solved version: a subtracted sum's fit carries its matrices over, any other drops them.
        refit = Refit(self._base.fit if self._base is not None else None)
        with self.gate.hold():  # decoding and summing hold the GIL; the LAPACK of the fit below does not
            subtracted = self._subtracted(model, manifest.version, keys)
            if subtracted is not None:
                parts, states, owners = subtracted
            else:
                states = {
                    key: self._states.get(key)
                    or load_checkpoint(model, _checkpoint(self._store, self._catalog, *key)).module
                    for key in keys
                }
                self._states = states  # only this version's: a superseded shard version is never read again
                parts = self._changed_sum(model, keys, states) or [states[key] for key in keys]
                owners = _owners(model, states)
        solve = self._solve
        ensemble = (
            solve(model, parts, refit=refit) if "refit" in inspect.signature(solve).parameters else solve(model, parts)
        )
        self._base = _Base(manifest.version, keys, ensemble.state, ensemble.fit, states, owners)
        return ensemble

    def _subtracted(
        self, model: SufficientStatisticsModel, version: int, keys: list[tuple[int, int]]
    ) -> tuple[list[torch.nn.Module], dict[tuple[int, int], torch.nn.Module], dict[str, int]] | None:
        """``version``'s sum as the last solved sum without the subjects erased since; None: not known to be one.

        Returns the one-state list, the shard states still current and the new owners. Taken when
        every version after the last solved one up to ``version`` was a pure erasure
        (``request(..., erased_from=)``) and the shards whose versions changed are exactly the
        shards that held the erased subjects found in the last solved sum.
        """
        base = self._base
        if base is None or base.owners is None or not isinstance(model, SubjectStatisticsModel):
            return None
        if len(base.keys) != len(keys):
            return None
        with self._changed:
            erasures = dict(self._erasures)
        subjects: set[str] = set()
        step = version
        while step != base.version:
            erasure = erasures.get(step)
            if erasure is None or not base.version <= erasure.parent < step:
                return None  # a version made otherwise (an ingest, another writer, a resumed commit)
            subjects |= erasure.subjects
            step = erasure.parent
        held = sorted(d for d in subjects if d in base.owners)
        changed = {key[0] for key, old in zip(keys, base.keys, strict=True) if key != old}
        if {base.owners[d] for d in held} != changed:
            log.info(
                "ensemble v%d: %d shard(s) changed but %d held the erased subjects; reading the changed shards",
                version, len(changed), len({base.owners[d] for d in held}),
            )  # fmt: skip
            return None
        try:
            total = model.without_subjects(base.total, held)
        except Exception as exc:  # e.g. a sum that does not hold them as recorded: the shards say why
            log.warning("ensemble v%d: taking the erased subjects out of the last sum failed (%s)", version, exc)
            return None
        current = set(keys)
        states = {key: state for key, state in base.states.items() if key in current}
        self._states = states
        gone = set(held)
        self.sums["subtracted"] += 1
        return [total], states, {d: shard for d, shard in base.owners.items() if d not in gone}

    def _changed_sum(
        self,
        model: SufficientStatisticsModel,
        keys: list[tuple[int, int]],
        states: dict[tuple[int, int], torch.nn.Module],
    ) -> list[torch.nn.Module] | None:
        """The summed state of ``keys`` from the last solved sum, as a one-state list; None: sum in full.

        Only for a model that subtracts exactly: the changed shards' old states out, their new
        states in (``DecrementalStatisticsModel.subtract``), the same bits as ``combine`` of all.
        """
        base = self._base
        if base is None or not isinstance(model, DecrementalStatisticsModel) or len(base.keys) != len(keys):
            self.sums["full"] += 1
            return None
        old_keys, total, old_states = base.keys, base.total, base.states
        changed = [i for i, (old, new) in enumerate(zip(old_keys, keys, strict=True)) if old != new]
        if any(old_keys[i] not in old_states for i in changed):  # taken out by subtraction since: not decoded
            self.sums["full"] += 1
            return None
        try:
            if changed:
                before = [old_states[old_keys[i]] for i in changed]
                after = [states[keys[i]] for i in changed]
                parts = getattr(model, "changed_parts", None)  # the changed subjects only (item_stats)
                out, into = parts(before, after) if parts is not None else (model.combine(before), model.combine(after))
                if "replacement" in inspect.signature(model.subtract).parameters:
                    total = model.subtract(total, out, into)  # one merge with the whole sum
                else:  # a model written against subtract(state, part): out, then in
                    total = model.combine([model.subtract(total, out), into])
        except Exception as exc:  # e.g. states that do not add up as recorded: the full sum says why
            log.warning("ensemble sum from the last solved version failed (%s); summing every shard", exc)
            self.sums["full"] += 1
            return None
        self.sums["changed_shards"] += len(changed)
        return [total]


def _owners(model: SufficientStatisticsModel, states: dict[tuple[int, int], torch.nn.Module]) -> dict[str, int] | None:
    """Subject digest -> the shard holding its rows, for a model whose state keeps subjects (else None)."""
    if not isinstance(model, SubjectStatisticsModel):
        return None
    return {digest: shard for (shard, _), state in states.items() for digest in model.subjects_of(state)}
