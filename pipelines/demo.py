"""Recipe: the end-to-end demo. Train S x R on generated ratings, forget one subject, prove exactness.

expunge demo [--shards 4] [--slices 4] [--workdir ./expunge-demo] [--json]
python -m expunge.pipelines.demo ...   (the same, as ``ray job submit`` runs it)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from expunge.orchestrator.config import (
    AnyModelConfig,
    JobConfig,
    ShardingConfig,
    StorageConfig,
    SyntheticRatingsConfig,
    TrackingConfig,
    TrainingConfig,
)
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.evidence.exactness import constituents_equal
from expunge.orchestrator.evidence.membership import MembershipAudit
from expunge.orchestrator.evidence.scan import scan_store
from expunge.orchestrator.evidence.verify import verify_erasure
from expunge.orchestrator.registry import default_tracking_uri
from expunge.orchestrator.training.work import monolith_ideal_speedup
from expunge.pipelines._runtime import (
    demo_hasher,
    exit_on_error,
    init_logging,
    init_ray,
    key_configured,
    make_lineage,
    progress,
)
from expunge.pipelines.datasets import split_rows, synthetic_ratings
from expunge.shards.manifest import shard_prefix
from expunge.shards.rows import RATING, SUBJECT_ID
from expunge.shards.store import ObjectStore

__all__ = ["DemoOptions", "DemoResult", "main", "run"]

log = logging.getLogger(__name__)


class DemoOptions(BaseModel):
    shards: int = 4
    slices: int = 4
    workdir: Path = Path("expunge-demo")
    storage: str | None = None
    tracking_uri: str | None = None
    users: int = 400
    seed: int = 0
    subject: str | None = None


class DemoResult(BaseModel):
    exact: bool
    erasure_seconds: float
    retrain_seconds: float
    full_retrain_seconds: float
    speedup: float
    #: CPU seconds of the erasure's retraining (the affected shards' actors).
    retrain_cpu_seconds: float = 0.0
    #: A warm monolithic retrain (S=1, R=1) on the remaining rows, in this process: wall and CPU seconds.
    monolith_seconds: float = 0.0
    monolith_cpu_seconds: float = 0.0
    #: The monolith's retrain over the erasure's retraining: wall time, CPU time, and the ideal
    #: (``training.work.monolith_ideal_speedup``, in row-epochs) beside them.
    speedup_vs_monolith: float = 0.0
    cpu_speedup_vs_monolith: float = 0.0
    ideal_speedup_vs_monolith: float = 0.0
    reference_seconds: float
    train_seconds: float
    affected_shards: list[int]
    slices_retrained: dict[int, list[int]]
    untouched_shards_unchanged: bool
    request_id: str
    forgotten_subject: str
    forgotten_subject_digest: str
    rows_removed: int
    model_name: str
    model_version: str | None
    storage: str
    tracking_uri: str
    test_rmse_before: float
    test_rmse_after: float
    scan_traces_before: int
    scan_traces_after: int
    deleted_objects: int
    #: ``expunge verify`` of the erasure, run at the end: overall outcome, each check's status, report path.
    verified: bool = False
    verification: dict[str, str] = {}
    verify_report: str = ""


def _fingerprints(store: ObjectStore, shards: list[int]) -> dict[str, str]:
    """sha256 of every slice and checkpoint object of the given shards."""
    keys = [k for s in shards for k in store.list_keys(shard_prefix(s)) if "/manifests/" not in k]
    return {k: hashlib.sha256(store.get(k)).hexdigest() for k in keys}


def _rmse(coordinator: Coordinator, test: pa.Table) -> float:
    if len(test) == 0:
        return float("nan")
    predictions = coordinator.predict(test)
    truth = test.column(RATING).to_numpy()
    return float(np.sqrt(np.mean((np.clip(predictions, 1, 5) - truth) ** 2)))


#: Written into a workdir the demo owns; without it the demo never deletes anything there.
_MARKER = ".expunge-demo"
_MARKER_TEXT = "This folder belongs to `expunge demo`, which recreates its contents.\n"
#: Heads the marker's list of the reports the last run wrote: the next run deletes those, and no other file.
_REPORTS_HEADING = "Reports of its last run (the next run deletes them):"
_REPORT_NAME = re.compile(r"^verify-[A-Za-z0-9._-]+\.(md|json)$")


def _claim_workdir(workdir: Path, own_store: bool, own_registry: bool) -> None:
    """Make ``workdir`` the demo's, refusing one that holds a store or registry the demo did not make.

    The demo starts its store and registry fresh on every run; that must never delete a real
    deployment's ``store/``, ``mlflow.db`` or ``mlruns/`` (``--workdir .`` in a project folder).

    Raises:
        ConfigError: the folder holds such files and no demo marker.
    """
    wiped = ([workdir / "store"] if own_store else []) + (
        [workdir / "mlflow.db", workdir / "mlruns"] if own_registry else []
    )
    present = [p.name for p in wiped if p.exists()]
    if present and not (workdir / _MARKER).exists():
        raise ConfigError(
            f"{workdir} holds {', '.join(present)}, which the demo did not make, and the demo starts them fresh "
            "on every run. Choose another --workdir (the default is ./expunge-demo); nothing was changed."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    for report in _last_run_reports(workdir):  # this run's folder holds this run's reports only
        report.unlink(missing_ok=True)
    _mark(workdir, [])


def _mark(workdir: Path, reports: list[Path]) -> None:
    """Write the marker, listing ``reports`` (this run's ``verify-*`` files) for the next run to delete."""
    listed = f"{_REPORTS_HEADING}\n" + "".join(f"{p.name}\n" for p in reports) if reports else ""
    (workdir / _MARKER).write_text(_MARKER_TEXT + listed)


def _last_run_reports(workdir: Path) -> list[Path]:
    """The reports the marker lists: those the demo's last run in ``workdir`` wrote (none for a folder it never marked).

    Only names listed under the heading and shaped as the demo names its reports, in ``workdir``
    itself: a file the user put there is never listed, so never deleted.
    """
    try:
        lines = (workdir / _MARKER).read_text().splitlines()
    except OSError:
        return []
    listed = lines[lines.index(_REPORTS_HEADING) + 1 :] if _REPORTS_HEADING in lines else []
    return [workdir / name for name in listed if _REPORT_NAME.match(name)]


def run(options: DemoOptions, quiet: bool = False) -> DemoResult:
    workdir = options.workdir.resolve()
    storage = options.storage or str(workdir / "store")
    _claim_workdir(workdir, own_store=options.storage is None, own_registry=options.tracking_uri is None)
    if options.storage is None and Path(storage).exists():
        shutil.rmtree(storage)  # the demo's own default store: start clean on every run
    if options.storage is None and options.tracking_uri is None:
        # ... and its own registry with it, so versions and purges concern this run's store only.
        (workdir / "mlflow.db").unlink(missing_ok=True)
        shutil.rmtree(workdir / "mlruns", ignore_errors=True)
    tracking = TrackingConfig(
        uri=options.tracking_uri or default_tracking_uri(workdir),
        experiment="expunge-demo",
        model_name="expunge-demo",
        charts=True,  # the demo is read in the MLflow UI: draw the retrain chart
    )
    job = JobConfig(
        sharding=ShardingConfig(shards=options.shards, slices=options.slices),
        training=TrainingConfig(epochs=8, batch_size=128, learning_rate=0.02, cpus_per_shard=1.0),
        storage=StorageConfig(uri=storage),
        tracking=tracking,
    )
    hasher = demo_hasher(workdir)
    rows, test = split_rows(
        synthetic_ratings(SyntheticRatingsConfig(users=options.users, seed=options.seed)), 0.1, options.seed
    )
    with progress("starting Ray", quiet):
        init_ray()
    coordinator = Coordinator(storage, hasher, make_lineage(tracking, storage))
    with progress(f"training {options.shards} shards x {options.slices} slices, registering version", quiet):
        train_seconds = coordinator.train(rows, job, request_id="demo-initial-training").seconds
    rmse_before = _rmse(coordinator, test)

    subjects = sorted(set(rows.column(SUBJECT_ID).to_pylist()))
    subject = options.subject or subjects[int(np.random.default_rng(options.seed).integers(len(subjects)))]
    digest = hasher.digest(subject)
    home = coordinator.placement_index().home_cells().get(digest)
    others = [s for s in range(options.shards) if home is None or s != home.shard]
    before = _fingerprints(coordinator.store, others)
    placement = coordinator.placement_index().without({digest})
    traces_before = len(scan_store(coordinator.store, subject, digest).findings)
    with progress("erasing one subject, registering and purging old versions", quiet):
        # The membership audit scores the subject's rows against the held-out test rows.
        receipt = coordinator.forget([subject], audit=MembershipAudit(test))
    traces_after = len(scan_store(coordinator.store, subject, digest).findings)
    after = _fingerprints(coordinator.store, [s for s in range(options.shards) if s not in receipt.affected_shards])
    rmse_after = _rmse(coordinator, test)
    unlearned = coordinator.constituent_tensors()
    assert coordinator.manifest is not None
    resolved_model = coordinator.manifest.model
    coordinator.close()

    remaining = rows.filter(pc.not_equal(rows.column(SUBJECT_ID), subject))
    with (
        progress("training from scratch without the subject, comparing every tensor", quiet),
        tempfile.TemporaryDirectory(prefix="expunge-reference-") as scratch,
    ):
        reference = Coordinator(str(Path(scratch) / "store"), hasher)
        reference_seconds = reference.train(remaining, job, placement=placement, model=resolved_model).seconds
        equal = constituents_equal(unlearned, reference.constituent_tensors())
        reference.close()
    with progress("timing a warm monolithic retrain on the same rows (S=1, R=1), in this process", quiet):
        monolith_seconds, monolith_cpu = _warm_monolith(remaining, job, resolved_model, hasher)
    with progress("verifying the erasure as `expunge verify` does, logging the report to MLflow", quiet):
        verification = verify_erasure(storage, receipt.request_id, hasher, subject_id=subject)
    # A job file for the demo's store, so it can be served as is (`expunge serve --config <workdir>/job.yaml`).
    # The demo's own key file, unless the key came from the environment (then serve reads it there too).
    key_file = None if key_configured(job.privacy) else str(workdir / "subject.key")
    served = job.model_copy(update={"privacy": job.privacy.model_copy(update={"subject_key_file": key_file})})
    (workdir / "job.yaml").write_text(yaml.safe_dump(served.model_dump(mode="json", exclude_defaults=True)))
    report_path = workdir / f"verify-{receipt.request_id}.md"
    report_path.write_text(verification.to_markdown())
    report_path.with_suffix(".json").write_text(verification.model_dump_json(indent=1))
    _mark(workdir, [report_path, report_path.with_suffix(".json")])  # the next run replaces them
    return DemoResult(
        exact=all(equal.values()),
        erasure_seconds=receipt.seconds,
        retrain_seconds=receipt.retrain_seconds,
        full_retrain_seconds=receipt.full_retrain_seconds,
        speedup=receipt.speedup,
        retrain_cpu_seconds=receipt.retrain_cpu_seconds,
        monolith_seconds=monolith_seconds,
        monolith_cpu_seconds=monolith_cpu,
        speedup_vs_monolith=_ratio(monolith_seconds, receipt.retrain_seconds),
        cpu_speedup_vs_monolith=_ratio(monolith_cpu, receipt.retrain_cpu_seconds),
        ideal_speedup_vs_monolith=monolith_ideal_speedup(
            options.shards, options.slices, job.training.epochs, [s.first_affected_slice for s in receipt.shards]
        ),
        reference_seconds=reference_seconds,
        train_seconds=train_seconds,
        affected_shards=receipt.affected_shards,
        slices_retrained={s.shard: list(s.slices_retrained) for s in receipt.shards},
        untouched_shards_unchanged=all(after.get(k) == v for k, v in before.items()) and set(after) == set(before),
        request_id=receipt.request_id,
        forgotten_subject=subject,
        forgotten_subject_digest=digest,
        rows_removed=receipt.rows_removed,
        model_name=tracking.model_name,
        model_version=receipt.registry_version_after,
        storage=storage,
        tracking_uri=tracking.uri or "",
        test_rmse_before=rmse_before,
        test_rmse_after=rmse_after,
        scan_traces_before=traces_before,
        scan_traces_after=traces_after,
        deleted_objects=len(receipt.deleted_objects),
        verified=verification.passed,
        verification={c.name: c.status for c in verification.checks},
        verify_report=str(report_path),
    )


def _ratio(baseline: float, measured: float) -> float:
    return baseline / measured if baseline > 0 and measured > 0 else 0.0


def _warm_monolith(rows: pa.Table, job: JobConfig, model: AnyModelConfig, hasher: SubjectHasher) -> tuple[float, float]:
    """Wall and CPU seconds of training one model (S=1, R=1) on ``rows`` in this process, warmed up first.

    The baseline SISA is measured against (Bourtoule et al., IEEE S&P 2021): the same model and
    epochs on all the remaining rows. A first run on a few rows pays the one-time costs
    (allocations, kernel selection), so the timed run is warm like the erasure's actors.
    """
    monolith = job.model_copy(update={"sharding": ShardingConfig(shards=1, slices=1)})
    timed = (0.0, 0.0)
    for sample in (rows.slice(0, min(len(rows), 500)), rows):
        with tempfile.TemporaryDirectory(prefix="expunge-monolith-") as scratch:
            coordinator = Coordinator(str(Path(scratch) / "store"), hasher, pool_factory=local_pool)
            manifest = coordinator.train(sample, monolith, model=model).manifest
            coordinator.close()
        timed = (manifest.train_seconds, manifest.train_cpu_seconds)
    return timed


def _print_summary(result: DemoResult, options: DemoOptions) -> None:
    console = Console()
    table = Table(title=f"Expunge demo: S={options.shards} shards x R={options.slices} slices", show_header=True)
    table.add_column("")
    table.add_column("value")
    table.add_row("forgotten subject", f"{result.forgotten_subject} (digest {result.forgotten_subject_digest[:12]}...)")
    table.add_row("rows removed", str(result.rows_removed))
    table.add_row(
        "affected shard (id)" if len(result.affected_shards) == 1 else "affected shards (ids)",
        ", ".join(map(str, result.affected_shards)),
    )
    table.add_row("slices retrained", "; ".join(f"shard {s}: {v}" for s, v in result.slices_retrained.items()))
    table.add_row("erasure to store commit", f"{result.erasure_seconds:.2f} s")
    table.add_row("  of which retraining", f"{result.retrain_seconds:.2f} s")
    table.add_row("warm monolithic retrain (S=1, R=1)", f"{result.monolith_seconds:.2f} s")
    table.add_row(
        "speed-up vs the monolith",
        f"{result.speedup_vs_monolith:.1f}x wall, {result.cpu_speedup_vs_monolith:.1f}x CPU "
        f"(ideal {result.ideal_speedup_vs_monolith:.1f}x)",
    )
    if result.cpu_speedup_vs_monolith < result.ideal_speedup_vs_monolith / 2:
        table.add_row(
            "  why below the ideal",
            "the demo's store is tiny: fixed costs per optimiser step and per slice outweigh the rows saved; "
            "on MovieLens 100K see `expunge benchmark erasure` (docs/scale.md)",
        )
    table.add_row("bit-identical to from-scratch", "yes" if result.exact else "NO")
    table.add_row("untouched shards byte-identical", "yes" if result.untouched_shards_unchanged else "NO")
    table.add_row("objects physically deleted", str(result.deleted_objects))
    table.add_row(
        "storage scan for the subject", f"{result.scan_traces_before} trace(s) before, {result.scan_traces_after} after"
    )
    table.add_row("test RMSE before / after", f"{result.test_rmse_before:.4f} / {result.test_rmse_after:.4f}")
    table.add_row("MLflow", f"model {result.model_name!r} version {result.model_version}; request {result.request_id}")
    checks = ", ".join(f"{name} {status}" for name, status in result.verification.items())
    table.add_row("verification (expunge verify)", f"{'passed' if result.verified else 'FAILED'}: {checks}")
    console.print(table)
    typer.echo(f"Verification report: {result.verify_report}")
    # Plain output, never wrapped by the terminal width, so the line pastes as one command; the
    # venv's own mlflow, so it works without activating the venv.
    beside = Path(sys.executable).parent / "mlflow"
    mlflow_cli = shlex.quote(str(beside)) if beside.exists() else "mlflow"
    typer.echo(f"Inspect: {mlflow_cli} ui --backend-store-uri {shlex.quote(result.tracking_uri)}")
    job_file = options.workdir / "job.yaml"
    if job_file.exists():  # the venv's own expunge too, for the same reason
        here = Path(sys.executable).parent / "expunge"
        expunge_cli = shlex.quote(str(here)) if here.exists() else "expunge"
        job = shlex.quote(str(job_file))
        typer.echo(
            f"Serve it over HTTP: {expunge_cli} serve --config {job} "
            f"(then `{expunge_cli} tokens create --config {job} --name CLIENT --scope ...`)"
        )


def main(
    shards: int = typer.Option(4, min=1, help="number of shards S"),
    slices: int = typer.Option(4, min=1, help="number of slices R per shard"),
    workdir: Path = typer.Option(Path("expunge-demo"), help="where the store and the MLflow database go"),
    storage: str | None = typer.Option(None, help="storage URI (default: WORKDIR/store)"),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (default: sqlite in WORKDIR)"),
    users: int = typer.Option(400, min=10, help="generated users (30 ratings each)"),
    seed: int = typer.Option(
        0, help="data and subject-choice seed (placement also depends on the digest key in WORKDIR/subject.key)"
    ),
    subject: str | None = typer.Option(None, help="subject to forget (default: a seeded random one)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train a SISA ensemble on generated ratings, forget one subject, and prove the result exact."""
    init_logging(verbose)
    if as_json:
        logging.getLogger().setLevel(logging.WARNING)
    options = DemoOptions(
        shards=shards,
        slices=slices,
        workdir=workdir,
        storage=storage,
        tracking_uri=tracking_uri,
        users=users,
        seed=seed,
        subject=subject,
    )
    with exit_on_error():
        result = run(options, quiet=as_json)
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json")))
    else:
        _print_summary(result, options)
    ok = result.exact and result.untouched_shards_unchanged and result.scan_traces_after == 0 and result.verified
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":
    typer.run(main)
