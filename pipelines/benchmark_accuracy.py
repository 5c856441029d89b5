"""Recipe: what exact unlearning costs a recommender in accuracy, per model family and number of shards.

    expunge benchmark accuracy --data ../shared/data/ml-100k/ml-100k.inter
    expunge benchmark accuracy --data ~/ml-1m/ratings.dat --models item_stats   (MovieLens 1M)
    python -m expunge.pipelines.benchmark_accuracy ...   (the same, as ``ray job submit`` runs it)

On the keyed-hash 80/20 split of ``expunge.pipelines.datasets.split_rows`` (seed 0), for each model
family: the whole-data model (S=1, R=1), then SISA ensembles with S shards of R slices under
subject-aware placement. Rating accuracy: RMSE and MAE on the held-out rows, predictions
clipped to the training ratings' range. Top-N: for every test user with a relevant held-out
item (rating >= 4), rank every item someone rated in training that the user did not, take
the first 20; NDCG@10 (binary gains, ideal = min(10, relevant) hits), Recall@10 and Recall@20
(hits in the first 10 / 20 over relevant items), averaged over those users. ``popularity``
ranks by training count (ties: the smaller item id) and predicts no ratings. ``item_stats``
ranks with EASE; ``item_stats_edlae`` is the same model and statistics ranking with EDLAE
(``ItemStatsConfig.ranker``), so its rating figures equal ``item_stats``'s. Costs: training seconds (``TrainResult.seconds``) and
the median seconds of a one-subject erasure (``ErasureReceipt.seconds``, end to end) of a few
random subjects, measured after the accuracy, with two speed-ups of their retraining phase
(``ErasureReceipt.retrain_seconds``, median): against the same family's whole-data model
of the same run (its own erasures, full retrains; "vs monolith", with the ideal from
``expunge.orchestrator.training.work`` for gradient families) and against a full SISA retrain
(``ErasureReceipt.speedup``). Every shard trains with the whole-data model's batch size and
epoch budget (compute parity). Timings are wall-clock on whatever machine runs it: compare
them within one run.

Writes the table (rich) to stdout, the rows to a JSON file and a PNG of accuracy against S.
"""

from __future__ import annotations

import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from expunge.orchestrator.config import (
    AnyModelConfig,
    ItemStatsConfig,
    JobConfig,
    MFConfig,
    ShardingConfig,
    TrainingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, PoolFactory, ray_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.serving.servable import EnsemblePredictor, export_ensemble
from expunge.orchestrator.training.work import monolith_ideal_speedup
from expunge.pipelines._runtime import exit_on_error, init_logging, init_ray, writable_output
from expunge.pipelines.datasets import load_movielens, split_rows
from expunge.shards.rows import ITEM_ID, RATING, SUBJECT_DIGEST, SUBJECT_ID

__all__ = ["AccuracyRow", "TopN", "main", "ndcg_recall_at_k", "run", "with_monolith_baseline"]

log = logging.getLogger(__name__)

#: Families the benchmark knows; ``popularity`` is the untrained top-N baseline.
MODELS = ("item_stats", "item_stats_edlae", "mf", "popularity")
#: Families summed from sufficient statistics (no epochs; ranked by their own top-N scorer), with their ranker.
_STATISTICS = {"item_stats": "ease", "item_stats_edlae": "edlae"}
#: Length of the ranked lists: Recall@20 needs 20 items, NDCG@10 and Recall@10 read the first 10.
_LIST = 20
_KEY = b"expunge-benchmark-key-not-secret!!"


class AccuracyRow(BaseModel):
    """One measured configuration; ``None`` where a figure does not apply (no ratings from popularity)."""

    model: str
    whole_data: bool
    shards: int
    slices: int
    rmse: float | None
    mae: float | None
    ndcg_at_10: float
    recall_at_10: float
    ranked_users: int
    #: None in results written before Recall@20 was measured.
    recall_at_20: float | None = None
    train_seconds: float | None
    erasure_seconds: float | None
    #: Training phase of ``train`` (``EnsembleManifest.train_seconds``) and median retraining phase.
    train_phase_seconds: float | None = None
    retrain_seconds: float | None = None
    #: Median retraining speed-up against a full SISA retrain (``ErasureReceipt.speedup``), against
    #: the same family's whole-data model of this run, and the ideal of the latter (gradient families).
    speedup: float | None = None
    speedup_vs_monolith: float | None = None
    ideal_speedup_vs_monolith: float | None = None


class TopN:
    """Held-out relevance of each test user, and the items each one may be recommended."""

    def __init__(self, train: pa.Table, test: pa.Table, relevant_from: float) -> None:
        self.rated: dict[str, set[int]] = {}
        for subject, item in zip(train.column(SUBJECT_ID).to_pylist(), train.column(ITEM_ID).to_pylist(), strict=True):
            self.rated.setdefault(subject, set()).add(int(item))
        liked = test.filter(pc.greater_equal(test.column(RATING), relevant_from))
        self.relevant: dict[str, set[int]] = {}
        for subject, item in zip(liked.column(SUBJECT_ID).to_pylist(), liked.column(ITEM_ID).to_pylist(), strict=True):
            if subject in self.rated:  # a test user the model has never seen has nothing to rank from
                self.relevant.setdefault(subject, set()).add(int(item))
        counts = np.bincount(train.column(ITEM_ID).to_numpy().astype(np.int64))
        self.item_counts = counts
        self.catalogue = np.nonzero(counts > 0)[0]  # items someone rated in training

    def users(self) -> list[str]:
        return sorted(self.relevant)

    def candidates(self, subject: str) -> np.ndarray:
        rated = self.rated.get(subject, set())
        return np.array([i for i in self.catalogue if int(i) not in rated], dtype=np.int64)


def ndcg_recall_at_k(ranked: Sequence[int], relevant: set[int], k: int = 10) -> tuple[float, float]:
    """NDCG@k with binary gains (ideal: min(k, |relevant|) hits on top) and Recall@k = hits / |relevant|."""
    if not relevant:
        raise ValueError("ndcg_recall_at_k needs at least one relevant item")
    gains = np.array([1.0 if item in relevant else 0.0 for item in list(ranked)[:k]])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, len(relevant))].sum()
    return float((gains * discounts[: len(gains)]).sum() / ideal), float(gains.sum() / len(relevant))


def _top_n(topn: TopN, recommend: Callable[[str], Sequence[int]]) -> tuple[float, float, float]:
    """Mean NDCG@10, Recall@10 and Recall@20 over the test users; ``recommend`` returns 20 items, best first."""
    scores = []
    for user in topn.users():
        ranked = list(recommend(user))
        ndcg, recall = ndcg_recall_at_k(ranked, topn.relevant[user], 10)
        scores.append((ndcg, recall, ndcg_recall_at_k(ranked, topn.relevant[user], _LIST)[1]))
    means = np.mean(scores, axis=0)
    return float(means[0]), float(means[1]), float(means[2])


def _rating_errors(predicted: np.ndarray, test: pa.Table, low: float, high: float) -> tuple[float, float]:
    error = np.clip(predicted, low, high) - test.column(RATING).to_numpy().astype(np.float64)
    return float(np.sqrt(np.mean(error**2))), float(np.mean(np.abs(error)))


def _served_ranking(
    coordinator: Coordinator, topn: TopN, hasher: SubjectHasher, scratch: Path
) -> Callable[[str], list[int]]:
    """Rank by the predicted rating of the served ensemble (in-process), for models without a top-N scorer."""
    assert coordinator.manifest is not None
    export_ensemble(coordinator.store, coordinator.manifest, scratch)
    predictor = EnsemblePredictor.load(scratch)

    def recommend(subject: str) -> list[int]:
        items = topn.candidates(subject)
        rows = pa.table({ITEM_ID: items, SUBJECT_DIGEST: pa.array([hasher.digest(subject)] * len(items))})
        order = np.argsort(-predictor.predict(rows), kind="stable")
        return [int(i) for i in items[order][:_LIST]]

    return recommend


def _measure(
    family: str,
    model: AnyModelConfig,
    training: TrainingConfig,
    shards: int,
    slices: int,
    data: tuple[pa.Table, pa.Table, TopN],
    erasures: int,
    seed: int,
    pool_factory: PoolFactory,
) -> AccuracyRow:
    train, test, topn = data
    hasher = SubjectHasher(_KEY)
    # Compute parity: every shard uses the whole-data model's batch size and epoch budget.
    job = JobConfig(
        sharding=ShardingConfig(shards=shards, slices=slices, placement="balanced"),
        training=training.model_copy(update={"model": model}),
    )
    low, high = (pc.min(train.column(RATING)).as_py(), pc.max(train.column(RATING)).as_py())
    with tempfile.TemporaryDirectory(prefix="expunge-accuracy-") as scratch:
        coordinator = Coordinator(str(Path(scratch) / "store"), hasher, pool_factory=pool_factory)
        try:
            result = coordinator.train(train, job)
            rmse, mae = _rating_errors(coordinator.predict(test), test, low, high)
            if family in _STATISTICS:
                ndcg, recall, recall_20 = _top_n(topn, lambda subject: coordinator.recommend(subject, _LIST))
            else:
                served = _served_ranking(coordinator, topn, hasher, Path(scratch) / "served")
                ndcg, recall, recall_20 = _top_n(topn, served)
            subjects = sorted(topn.rated)
            chosen = np.random.default_rng(seed).choice(len(subjects), size=min(erasures, len(subjects)), replace=False)
            receipts = [coordinator.forget([subjects[int(i)]]) for i in chosen]
        finally:
            coordinator.close()
    return AccuracyRow(
        model=family,
        whole_data=shards == 1 and slices == 1,
        shards=shards,
        slices=slices,
        rmse=rmse,
        mae=mae,
        ndcg_at_10=ndcg,
        recall_at_10=recall,
        recall_at_20=recall_20,
        ranked_users=len(topn.users()),
        train_seconds=result.seconds,
        erasure_seconds=statistics.median(r.seconds for r in receipts) if receipts else None,
        train_phase_seconds=result.manifest.train_seconds,
        retrain_seconds=statistics.median(r.retrain_seconds for r in receipts) if receipts else None,
        speedup=statistics.median(r.speedup for r in receipts) if receipts else None,
        ideal_speedup_vs_monolith=(
            monolith_ideal_speedup(
                shards, slices, training.epochs, [s.first_affected_slice for r in receipts for s in r.shards]
            )
            if receipts and family not in _STATISTICS
            else None
        ),
    )


def with_monolith_baseline(results: Sequence[AccuracyRow]) -> list[AccuracyRow]:
    """Pure: ``speedup_vs_monolith`` of each row against its family's whole-data row of ``results``.

    The whole-data model's own erasure (a full retrain without the subject, warm) over the
    row's median retraining phase; its first training phase when it had no erasure; None
    where a time is missing or 0.
    """
    phases = {r.model: r.retrain_seconds or r.train_phase_seconds for r in results if r.whole_data}
    out = []
    for r in results:
        monolith = phases.get(r.model)
        ratio = monolith / r.retrain_seconds if monolith and r.retrain_seconds else None
        out.append(r.model_copy(update={"speedup_vs_monolith": ratio}))
    return out


def _popularity(topn: TopN) -> AccuracyRow:
    order = np.argsort(-topn.item_counts, kind="stable")  # ties: the smaller item id

    def recommend(subject: str) -> list[int]:
        rated = topn.rated.get(subject, set())
        return [int(i) for i in order if int(i) not in rated and topn.item_counts[i] > 0][:_LIST]

    ndcg, recall, recall_20 = _top_n(topn, recommend)
    return AccuracyRow(
        model="popularity",
        whole_data=True,
        shards=1,
        slices=1,
        rmse=None,
        mae=None,
        ndcg_at_10=ndcg,
        recall_at_10=recall,
        recall_at_20=recall_20,
        ranked_users=len(topn.users()),
        train_seconds=None,
        erasure_seconds=None,
    )


def run(
    data: Path,
    shard_counts: Sequence[int] = (1, 4, 8, 16),
    slices: int = 4,
    models: Sequence[str] = MODELS,
    item_stats: ItemStatsConfig | None = None,
    training: TrainingConfig | None = None,
    erasures: int = 3,
    seed: int = 0,
    relevant_from: float = 4.0,
    pool_factory: PoolFactory = ray_pool,
) -> list[AccuracyRow]:
    """Measure every model of ``models``: whole data, then each S of ``shard_counts`` with ``slices`` slices.

    ``item_stats`` defaults to ``ItemStatsConfig()``; ``item_stats_edlae`` is that config with
    ``ranker="edlae"`` (its dropout settings as given); ``training`` sets the gradient families' loop
    (default: the erasure benchmark's MF settings).
    The caller starts Ray when ``pool_factory`` is ``ray_pool``.

    Raises:
        ValueError: an unknown model name.
    """
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    training = training or TrainingConfig(
        model=MFConfig(embedding_dim=32, l2=0.1), epochs=20, batch_size=512, learning_rate=0.01
    )
    train, test = split_rows(load_movielens(data), 0.2, seed)
    topn = TopN(train, test, relevant_from)
    statistics = item_stats or ItemStatsConfig()
    families: dict[str, AnyModelConfig] = {
        **{family: statistics.model_copy(update={"ranker": ranker}) for family, ranker in _STATISTICS.items()},
        "mf": training.model,
    }
    plan = [
        (family, s, r)
        for family in models
        if family in families
        for s, r in [(1, 1), *((s, slices) for s in shard_counts)]
    ]
    results = [_popularity(topn)] if "popularity" in models else []
    with Progress(transient=True) as progress:
        task = progress.add_task("accuracy", total=len(plan))
        for family, shards, slice_count in plan:
            progress.update(task, description=f"{family} S={shards} R={slice_count}")
            began = time.perf_counter()
            results.append(
                _measure(
                    family,
                    families[family],
                    training,
                    shards,
                    slice_count,
                    (train, test, topn),
                    erasures,
                    seed,
                    pool_factory,
                )
            )
            log.info("%s S=%d R=%d measured in %.1fs", family, shards, slice_count, time.perf_counter() - began)
            progress.advance(task)
    return with_monolith_baseline(results)


def _figure(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _speedups(measured: float | None, ideal: float | None) -> str:
    if measured is None:
        return "-"
    return f"{measured:.1f}x" if ideal is None else f"{measured:.1f}x | {ideal:.1f}x"


def table(results: Sequence[AccuracyRow], title: str) -> Table:
    """The rich table of ``results`` (one row each, in order)."""
    out = Table(title=title)
    columns = ("model", "setup", "S", "R", "RMSE", "MAE", "NDCG@10", "Recall@10", "Recall@20", "train s", "erasure s")
    for column in (*columns, "vs monolith", "vs full SISA"):
        out.add_column(column, justify="left" if column in ("model", "setup") else "right")
    for r in results:
        out.add_row(
            r.model,
            "baseline" if r.model == "popularity" else "whole data" if r.whole_data else "SISA",
            str(r.shards),
            str(r.slices),
            _figure(r.rmse),
            _figure(r.mae),
            _figure(r.ndcg_at_10),
            _figure(r.recall_at_10),
            _figure(r.recall_at_20),
            _figure(r.train_seconds, 2),
            _figure(r.erasure_seconds, 2),
            _speedups(r.speedup_vs_monolith, r.ideal_speedup_vs_monolith),
            _speedups(r.speedup, None),
        )
    return out


def plot(results: Sequence[AccuracyRow], path: Path, title: str) -> None:
    """PNG of RMSE and NDCG@10 against S; whole-data models and the baseline as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rmse_axis, ndcg_axis) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {"item_stats": "tab:blue", "item_stats_edlae": "tab:green", "mf": "tab:orange", "popularity": "tab:gray"}
    for family in dict.fromkeys(r.model for r in results):
        rows = [r for r in results if r.model == family]
        sisa = [r for r in rows if not r.whole_data]
        whole = next((r for r in rows if r.whole_data), None)
        colour = colours.get(family)
        for axis, metric in ((rmse_axis, "rmse"), (ndcg_axis, "ndcg_at_10")):
            points = [(r.shards, getattr(r, metric)) for r in sisa if getattr(r, metric) is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", color=colour, label=f"{family} (SISA)")
            if whole is not None and getattr(whole, metric) is not None:
                label = family if family == "popularity" else f"{family} (whole data)"
                axis.axhline(getattr(whole, metric), linestyle="--", color=colour, label=label)
    rmse_axis.set(xlabel="shards S", ylabel="test RMSE (lower is better)", xscale="log", title="rating accuracy")
    ndcg_axis.set(xlabel="shards S", ylabel="NDCG@10 (higher is better)", xscale="log", title="top-N")
    for axis in (rmse_axis, ndcg_axis):
        axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _own_arguments(argv: list[str]) -> list[str]:
    """The options of this recipe, whether run as ``expunge benchmark accuracy`` or ``python -m``."""
    return argv[2:] if argv[:2] == ["benchmark", "accuracy"] else argv


def main(
    data: Path = typer.Option(..., help="MovieLens ratings (u.data, ml-100k.inter, ratings.dat or ratings.csv)"),
    shards: list[int] = typer.Option([1, 4, 8, 16], "--shards", help="S values of the SISA rows (repeatable)"),
    slices: int = typer.Option(4, min=1, help="R of the SISA rows (the whole-data row has S=1, R=1)"),
    models: list[str] = typer.Option(
        list(MODELS), "--models", help="item_stats, item_stats_edlae, mf, popularity (repeatable)"
    ),
    erasures: int = typer.Option(3, min=0, help="random one-subject erasures timed per configuration"),
    epochs: int = typer.Option(20, min=1, help="MF epochs"),
    seed: int = typer.Option(0, help="split seed and erasure choice"),
    local: bool = typer.Option(False, "--local", help="in-process shards instead of Ray actors"),
    output: Path = typer.Option(Path("accuracy-results.json"), help="JSON results file"),
    figure: Path = typer.Option(Path("accuracy-vs-shards.png"), help="PNG of accuracy against S"),
) -> None:
    """Accuracy of each model family against S (RMSE, MAE, NDCG@10, Recall@10/20), training and erasure seconds."""
    from expunge.orchestrator.coordinator import local_pool

    init_logging()
    with exit_on_error():  # checked first: the results are written after minutes of work
        writable_output(output)
        writable_output(figure, "--figure")
    logging.getLogger("expunge.orchestrator").setLevel(logging.WARNING)
    item_stats = ItemStatsConfig()
    training = TrainingConfig(model=MFConfig(embedding_dim=32, l2=0.1), epochs=epochs, batch_size=512)
    with exit_on_error():  # a missing or malformed --data is bad input (exit 2), not a bug
        load_movielens(data)  # checked before Ray starts
        if not local:
            init_ray()
        results = run(
            data,
            shards,
            slices,
            models,
            item_stats,
            training,
            erasures,
            seed,
            pool_factory=local_pool if local else ray_pool,
        )
    title = f"Accuracy against shards on {data.name} (80/20 keyed-hash split, seed {seed})"
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # a pipe or file: keep the table on one line per row
    console.print(table(results, title))
    settings: dict[str, Any] = {
        "item_stats": item_stats.model_dump(mode="json"),
        "mf_training": training.model_dump(mode="json"),
        "split": {"test_fraction": 0.2, "seed": seed, "relevant_from": 4.0},
        "command": shlex.join(["expunge", "benchmark", "accuracy", *_own_arguments(sys.argv[1:])]),
    }
    output.write_text(
        json.dumps({"data": str(data), "settings": settings, "results": [r.model_dump() for r in results]}, indent=1)
    )
    plot(results, figure, title)
    Console(stderr=True).print(f"results written to {output} and {figure}")  # stdout keeps the table


if __name__ == "__main__":
    typer.run(main)
