"""Recipe: ``expunge chaos``, a seeded fault campaign against the erasure service that anyone can run.

    expunge chaos --requests 40 --seed 11 --output chaos-out

Needs no setup: everything runs on loopback. It starts an S3 API server (moto), the fault proxy
(``expunge.pipelines.fault_proxy``) in front of it, a local Ray cluster and MLflow (sqlite and
artifacts in ``--output``); trains a small store on the S3 server; starts the erasure service on
it; then submits ``--requests`` one-subject erasures through the SDK (``expunge.RayClient``), as a
client would (each retried with its idempotency key when a call fails). Before every few requests
a seeded schedule (``plan_faults``) injects one fault:

- ``cut``, ``slow``, ``error_503``: for a few seconds the proxy cuts connections (before or
  after forwarding), delays requests, or answers 503 SlowDown;
- ``refuse_delete``: version deletes are refused, as a bucket policy denying
  ``s3:DeleteObjectVersion`` would;
- ``kill_service``, ``kill_shard``: SIGKILL of the service's process or of a shard actor;
- ``cli_writer``: ``expunge forget`` against the served store, from another process;
- ``racing_retrain``: a full training of the store, from another process's lease;
- ``ingest``: a batch of new rows through the SDK (``RayClient.ingest``), retried with its
  request id like an erasure: new people, new rows of a bystander, and rows of a person whose
  erasure is done (they must be refused).

Then the faults stop; it waits until every acknowledged request is done (committed, registered,
nothing pending), stops the service and checks the store directly (``chaos_checks``). It prints one
JSON summary (also ``--output``/summary.json) and exits 1 on any violation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from expunge.orchestrator.config import (
    DataConfig,
    JobConfig,
    MFConfig,
    PrivacyConfig,
    ServiceConfig,
    ShardingConfig,
    StorageConfig,
    SyntheticRatingsConfig,
    TrackingConfig,
    TrainingConfig,
)
from expunge.orchestrator.errors import ConfigError, ExpungeError
from expunge.pipelines._runtime import exit_on_error, init_logging, init_ray, progress
from expunge.pipelines.chaos_checks import ChaosSummary, Ingested, Submitted, check_campaign

__all__ = ["KINDS", "main", "plan_faults", "run_campaign"]

log = logging.getLogger(__name__)

#: Every fault the campaign can inject.
KINDS = (
    "cut",
    "slow",
    "error_503",
    "refuse_delete",
    "kill_service",
    "kill_shard",
    "cli_writer",
    "racing_retrain",
    "ingest",
)
#: The proxy's rates during a phase of each network fault.
_NETWORK: dict[str, dict[str, float]] = {
    "cut": {"cut": 0.25, "cut_after": 0.15},
    "slow": {"slow": 0.5},
    "error_503": {"error_503": 0.3},
    "refuse_delete": {"refuse_delete": 1.0},
}
_SUBMIT_ATTEMPTS = 8


def plan_faults(seed: int, requests: int, kinds: tuple[str, ...] = KINDS) -> dict[int, str]:
    """Which fault starts just before which request, by request index (pure, seeded).

    One fault every ``max(2, requests // (2 * len(kinds)))`` requests from request 1 on; the
    kinds come in rounds, each round a seeded shuffle of every kind, so a run of at least
    ``2 * len(kinds)`` requests injects each kind at least once.
    """
    rng = random.Random(seed)
    gap = max(2, requests // (2 * len(kinds)))
    plan: dict[int, str] = {}
    round_: list[str] = []
    for index in range(1, requests, gap):
        if not round_:
            round_ = list(kinds)
            rng.shuffle(round_)
        plan[index] = round_.pop()
    return plan


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The campaign's digest key, in ``--output`` while the campaign runs.
_KEY_FILE = ".subject.key"


class _Campaign:
    """One run: the servers it started, the service, the faults so far and what was submitted."""

    def __init__(self, requests: int, seed: int, output: Path, shards: int, slices: int, settle_s: float) -> None:
        self.requests = requests
        self.seed = seed
        self.output = output
        self.shards = shards
        self.slices = slices
        self.settle_s = settle_s
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.writers: Counter[str] = Counter()
        self.ingested: list[Ingested] = []
        self.client: Any = None
        self.submitted: list[Submitted] = []
        self._phase = 0
        self._lock = threading.Lock()

    # ----- set-up ---------------------------------------------------------------------------------
    def start_s3(self) -> None:
        try:
            import boto3
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise ConfigError(
                f"expunge chaos runs its own S3 API server (moto), which is not installed ({exc}); install the "
                "development extras: pip install -e '.[dev]'"
            ) from exc
        from expunge.pipelines.fault_proxy import FaultProxy, FaultSchedule

        for name, value in (("AWS_ACCESS_KEY_ID", "chaos"), ("AWS_SECRET_ACCESS_KEY", "chaos-secret")):
            os.environ.setdefault(name, value)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        port = _free_port()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.moto.start()
        self.s3_url = f"http://127.0.0.1:{port}"
        self.bucket = f"chaos-{uuid.uuid4().hex[:10]}"
        client = boto3.client("s3", endpoint_url=self.s3_url)
        client.create_bucket(Bucket=self.bucket)
        client.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.proxy = FaultProxy(self.s3_url, FaultSchedule()).start()

    def job(self) -> JobConfig:
        users = max(40, self.requests * 3 // 2)
        namespace = f"chaos-{self.seed}-{os.getpid()}"
        return JobConfig(
            data=DataConfig(
                synthetic=SyntheticRatingsConfig(users=users, items=30, ratings_per_user=8, seed=self.seed)
            ),
            sharding=ShardingConfig(shards=self.shards, slices=self.slices, placement="balanced"),
            training=TrainingConfig(model=MFConfig(embedding_dim=4), epochs=3, batch_size=64, cpus_per_shard=0.25),
            storage=StorageConfig(
                uri=f"s3://{self.bucket}/store", endpoint_url=self.proxy.url, timeout_s=3.0, lease_ttl_s=10.0
            ),
            tracking=TrackingConfig(
                uri=f"sqlite:///{self.output.resolve() / 'mlflow.db'}",
                experiment="chaos",
                model_name=f"chaos-{self.seed}",
                artifact_location=str(self.output.resolve() / "mlartifacts"),
            ),
            service=ServiceConfig(namespace=namespace, window_ms=200, register_within_s=2.0, shard_restarts=-1),
            # The service reads the campaign's key from this file (run_campaign writes it, 0600, and
            # deletes it at the end): a key is never passed through Ray.
            privacy=PrivacyConfig(subject_key_file=str(self.output.resolve() / _KEY_FILE)),
        )

    # ----- faults ---------------------------------------------------------------------------------
    def inject(self, kind: str, job: JobConfig, handle: Any, subjects: list[str]) -> None:
        import ray

        from expunge.pipelines.fault_proxy import FaultSchedule

        log.warning("chaos: injecting %s", kind)
        if kind in _NETWORK:
            with self._lock:
                self._phase += 1
                phase = self._phase
            schedule = FaultSchedule(rates=_NETWORK[kind], seed=self.rng.randrange(2**31), slow_seconds=0.3)
            self.proxy.set_schedule(schedule)
            threading.Timer(self.rng.uniform(1.5, 4.0), self._end_phase, (phase,)).start()
            return  # counted by the proxy when a request is actually hit
        self.faults[kind] += 1
        if kind == "kill_service":
            os.kill(int(ray.get(handle.pid.remote(), timeout=120)), signal.SIGKILL)
        elif kind == "kill_shard":
            pids = ray.get(handle.shard_actor_pids.remote(), timeout=120)
            if pids:
                os.kill(pids[self.rng.choice(sorted(pids))], signal.SIGKILL)
        elif kind in ("cli_writer", "racing_retrain"):
            # A rival writer while the service runs (not while Ray restarts it: then no live process
            # holds the store, and a writer may rightly take it over). It must be refused.
            ray.get(handle.pid.remote(), timeout=300)
            if kind == "cli_writer":
                self._cli_writer(job, self.rng.choice(subjects))
            else:
                self._racing_retrain(job)
        elif kind == "ingest":
            self._ingest(job, self.rng.choice(subjects))

    def _ingest(self, job: JobConfig, bystander: str) -> None:
        """A batch through the service, retried with one request id; what it held is checked at the end."""
        number = self.faults["ingest"]
        items = job.data.synthetic.items
        rows: dict[str, str] = {}
        for person in range(2):  # new people
            for k in range(3):
                rows[f"chaos-ingest-{self.seed}-{number}-new{person}-{k}"] = f"arrival-{self.seed}-{number}-{person}"
        rows[f"chaos-ingest-{self.seed}-{number}-bystander"] = bystander  # a known person nobody erases
        done = [s for s in self.submitted if s.expected_rows and s.request_id and self._done(s.request_id)]
        if done:  # someone whose erasure is done: refused, never stored
            rows[f"chaos-ingest-{self.seed}-{number}-erased"] = self.rng.choice(done).subject
        request_id = f"chaos-ingest-{self.seed}-{number}"
        batch = {
            "record_id": list(rows),
            "subject_id": list(rows.values()),
            "item_id": [self.rng.randrange(items // 2) for _ in rows],  # well inside the trained catalogue
            "rating": [float(self.rng.randint(1, 5)) for _ in rows],
        }
        acknowledged = False
        for attempt in range(_SUBMIT_ATTEMPTS):
            try:
                self.client.ingest(batch, request_id=request_id)
                acknowledged = True
                break
            except ExpungeError as exc:
                log.warning("chaos: ingest %s failed (%s); retrying", request_id, str(exc)[:200])
                time.sleep(min(0.5 * 2**attempt, 8.0))
        self.ingested.append(Ingested(request_id, rows, acknowledged))

    def _done(self, request_id: str) -> bool:
        try:
            return bool(self.client.status(request_id).stage in ("committed", "registered"))
        except ExpungeError:
            return False

    def _end_phase(self, phase: int) -> None:
        with self._lock:
            if phase == self._phase:
                self.proxy.pause()

    def _cli_writer(self, job: JobConfig, subject: str) -> None:
        """``expunge forget`` from another process against the served store: it must be refused."""
        config = self.output / "job.json"
        config.write_text(job.model_dump_json())
        process = subprocess.Popen(
            [sys.executable, "-m", "expunge.pipelines.forget", "--config", str(config), "--subject", subject],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        def collect() -> None:
            _, err = process.communicate(timeout=600)
            refused = process.returncode == 4 and "being written by" in err
            self.writers["refused" if refused or process.returncode not in (0, 3) else "admitted"] += 1
            if not refused:
                log.warning("chaos: the CLI writer exited %d: %s", process.returncode, err.strip()[-300:])

        collect()  # before the next fault: a rival that outlives a killed service would rightly win

    def _racing_retrain(self, job: JobConfig) -> None:
        """A full training of the served store from another process: it must be refused."""
        script = (
            "import sys\n"
            "from expunge.orchestrator.config import JobConfig\n"
            "from expunge.orchestrator.coordinator import Coordinator, local_pool\n"
            "from expunge.orchestrator.digests import SubjectHasher\n"
            "from expunge.orchestrator.errors import StoreBusyError\n"
            "from expunge.pipelines.datasets import synthetic_ratings\n"
            "job = JobConfig.model_validate_json(sys.argv[1])\n"
            "# Rows of people erased so far are dropped, not refused: the training must reach the store's lease.\n"
            "job = job.model_copy(update={'data': job.data.model_copy(update={'erased_subjects': 'drop'})})\n"
            "coordinator = Coordinator(job.storage, SubjectHasher.from_env('EXPUNGE_SUBJECT_KEY'), None, local_pool)\n"
            "try:\n"
            "    coordinator.train(synthetic_ratings(job.data.synthetic), job)\n"
            "except StoreBusyError:\n"
            "    sys.exit(4)\n"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", script, job.model_dump_json()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        def collect() -> None:
            _, err = process.communicate(timeout=600)
            self.writers["refused" if process.returncode != 0 else "admitted"] += 1
            if process.returncode not in (0, 4):
                log.warning("chaos: the racing retrain exited %d: %s", process.returncode, err.strip()[-300:])

        collect()  # before the next fault: a rival that outlives a killed service would rightly win

    # ----- requests -------------------------------------------------------------------------------
    def submit(self, client: Any, subject: str, key: str) -> str | None:
        """``client.submit`` retried with the same idempotency key, as a client would; None if never acknowledged."""
        for attempt in range(_SUBMIT_ATTEMPTS):
            try:
                return str(client.submit([subject], idempotency_key=key))
            except ExpungeError as exc:  # StoreBusyError and LeaseLostError included
                log.warning("chaos: submit %s failed (%s); retrying", key, str(exc)[:200])
                time.sleep(min(0.5 * 2**attempt, 8.0))
        return None

    def settle(self, client: Any, submitted: list[Submitted]) -> list[Submitted]:
        """Wait until every acknowledged request is done, up to ``settle_s``; returns what each showed last."""
        deadline = time.monotonic() + self.settle_s
        final: dict[int, Any] = {}
        while time.monotonic() < deadline:
            for item in submitted:
                if item.request_id is None or (item.index in final and final[item.index].state == "done"):
                    continue
                try:
                    final[item.index] = client.status(item.request_id)
                except ExpungeError as exc:
                    log.warning("chaos: status of %s: %s", item.request_id, exc)
            if all(s.request_id is None or (s.index in final and final[s.index].state == "done") for s in submitted):
                break
            time.sleep(1.0)
        return [Submitted(s.index, s.subject, s.expected_rows, s.request_id, final.get(s.index)) for s in submitted]


def run_campaign(
    requests: int, seed: int, output: Path, shards: int = 4, slices: int = 3, settle_s: float = 600.0
) -> ChaosSummary:
    """Run one campaign (see the module docstring); returns its summary, violations listed."""
    import ray

    from expunge.orchestrator.client import RayClient
    from expunge.orchestrator.coordinator import Coordinator, local_pool
    from expunge.orchestrator.digests import SubjectHasher
    from expunge.orchestrator.registry import Lineage
    from expunge.orchestrator.service.actor import start_service, stop_service
    from expunge.pipelines.datasets import synthetic_ratings
    from expunge.shards.rows import SUBJECT_ID

    began = time.perf_counter()
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output {output}: cannot make that folder ({exc}); pass a folder you can write") from exc
    campaign = _Campaign(requests, seed, output, shards, slices, settle_s)
    os.environ.setdefault("EXPUNGE_SUBJECT_KEY", secrets.token_hex(32))
    hasher = SubjectHasher.from_env("EXPUNGE_SUBJECT_KEY")
    key_file = output / _KEY_FILE
    key_file.unlink(missing_ok=True)
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(os.environ["EXPUNGE_SUBJECT_KEY"])
    try:
        with progress("starting an S3 API server (moto) and the fault proxy"):
            campaign.start_s3()
    except BaseException:
        key_file.unlink(missing_ok=True)
        raise
    try:
        job = campaign.job()
        rows = synthetic_ratings(job.data.synthetic)
        counts = Counter(rows.column(SUBJECT_ID).to_pylist())
        with progress(f"training the store (S={shards}, R={slices}, {len(rows)} rows) on S3"):
            Coordinator(job.storage, hasher, Lineage(job.tracking, job.storage), local_pool).train(rows, job)
        with progress("starting Ray and the erasure service"):
            init_ray()
            handle, _ = start_service(job)
        client = RayClient(handle, job.service.namespace, job.service.name, retry_s=300)
        campaign.client = client
        people = sorted(counts)
        chosen = campaign.rng.sample(people, min(requests, len(people) - 5))
        # A rival CLI writer names someone no request names: were it admitted, no receipt would change.
        bystanders = sorted(set(people) - set(chosen))
        plan = plan_faults(seed, requests)
        submitted = campaign.submitted
        log.warning("chaos: submitting %d request(s); faults planned: %s", requests, dict(Counter(plan.values())))
        for index in range(requests):
            if index in plan:
                campaign.inject(plan[index], job, handle, bystanders)
            # About one request in eight names nobody the store holds: its receipt must say not_found.
            subject = f"ghost-{seed}-{index}" if index % 8 == 7 or index >= len(chosen) else chosen[index]
            key = f"chaos-{seed}-{index}"
            submitted.append(Submitted(index, subject, counts.get(subject, 0), campaign.submit(client, subject, key)))
            time.sleep(campaign.rng.uniform(0.0, 0.4))
        campaign.proxy.pause()
        with progress("faults stopped; waiting until every acknowledged request is done"):
            submitted = campaign.settle(client, submitted)
        with progress("stopping the service"):
            stop_service(job.service.namespace, job.service.name)
            ray.shutdown()
        faults = Counter(campaign.faults) + Counter(campaign.proxy.injected)
        direct = job.storage.model_copy(update={"endpoint_url": campaign.s3_url})
        with progress("checking every request, shard, scan and model version"):
            summary = check_campaign(direct, hasher, submitted, campaign.writers, faults, 0.0, campaign.ingested)
    finally:
        campaign.proxy.stop()
        campaign.moto.stop()
        key_file.unlink(missing_ok=True)
    summary = summary.model_copy(update={"seconds": round(time.perf_counter() - began, 1)})  # checks included
    (output / "summary.json").write_text(summary.model_dump_json(indent=1))
    return summary


def main(
    requests: int = typer.Option(40, min=2, help="erasure requests to submit through the SDK"),
    seed: int = typer.Option(11, help="seed of the fault schedule, the subjects and the data"),
    output: Path = typer.Option(Path("chaos-out"), help="folder for summary.json, the MLflow database and artifacts"),
    shards: int = typer.Option(4, min=1, help="S of the store under test"),
    slices: int = typer.Option(3, min=1, help="R of the store under test"),
    settle_s: float = typer.Option(600.0, min=1.0, help="seconds to wait for every request to be done"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a seeded fault campaign (S3 faults, kills, concurrent writers) and check every request.

    Prints one JSON summary (acknowledged, erased_exactly_once, lost, stuck, resurrected,
    wrong_receipts, loadable_purged, scan_clean, faults_injected, seconds, ...). Exit 0 when
    nothing was violated, 1 on any violation, 2 on bad input, 4 when Ray or a server cannot start.
    """
    init_logging(verbose)
    # Ray prints its workers' deaths (the campaign's own kills) to stdout: keep stdout for the summary.
    with exit_on_error(), contextlib.redirect_stdout(sys.stderr):
        summary = run_campaign(requests, seed, output, shards, slices, settle_s)
    typer.echo(json.dumps(summary.model_dump(), indent=1))
    if summary.violations:
        typer.echo(f"chaos: {len(summary.violations)} violation(s); see violations in the summary", err=True)
        raise typer.Exit(1)
    typer.echo(f"chaos: no violation in {summary.acknowledged} acknowledged request(s)", err=True)


if __name__ == "__main__":
    typer.run(main)
