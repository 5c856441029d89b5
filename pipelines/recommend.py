"""Recipe: top-k recommendations for one subject from the published exact ensemble.

    expunge recommend --storage ./expunge-store-ml100k --subject 196 -k 10
    expunge recommend --config infra/configs/ml100k-item-stats.yaml --subject 196
    python -m expunge.pipelines.recommend ...   (the same, as ``ray job submit`` runs it)

Prints one JSON object on stdout: the subject's digest (never the raw id), the ensemble version
and the item ids, best first. An item_stats store answers from the summed shard states in the
store (no Ray); a matrix-factorisation store starts Ray to score every item. Exit 2 when the
subject has no rows in the published version (never trained on, or erased) or on bad input.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from expunge.orchestrator.config import PrivacyConfig, StorageConfig
from expunge.orchestrator.coordinator import Coordinator
from expunge.orchestrator.session import published
from expunge.pipelines._runtime import exit_on_error, hasher_from_env, init_logging, init_ray, job_and_store, progress
from expunge.shards.identity import canonical_subject_ids
from expunge.shards.models import SufficientStatisticsModel, model_for

__all__ = ["main", "run"]

log = logging.getLogger(__name__)


def run(storage: StorageConfig, subject: str, k: int, privacy: PrivacyConfig = PrivacyConfig()) -> dict[str, object]:
    """The ``k`` best unseen items for ``subject`` from the latest published version of ``storage``.

    Raises:
        ConfigError: no key, no trained store, ``k < 1`` or a classifier.
        UnknownSubjectError: the published version holds no rows of the subject.
    """
    hasher = hasher_from_env(privacy)  # fail on a missing key before reading anything
    _, latest = published(storage)
    if not isinstance(model_for(latest.model), SufficientStatisticsModel):
        with progress("starting Ray"):
            init_ray()  # gradient constituents score items in their shard actors
    coordinator = Coordinator(storage, hasher)
    try:
        with progress(f"ranking items with ensemble v{latest.version}"):
            items = coordinator.recommend(subject, k)
    finally:
        coordinator.close()
    return {"subject_digest": hasher.digest(subject), "ensemble_version": latest.version, "items": items}


def main(
    subject: str = typer.Option(..., "--subject", help="subject id to recommend for"),
    k: int = typer.Option(10, "-k", "--k", min=1, help="how many items"),
    config: Path | None = typer.Option(None, help="job config YAML (for storage and privacy)"),
    storage: str | None = typer.Option(None, help="storage URI (overrides the config)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Top-k items a subject has not rated, from the published exact ensemble (JSON on stdout)."""
    init_logging(verbose)
    with exit_on_error():
        job, store = job_and_store(config, storage)
        (canonical,) = canonical_subject_ids([subject], "the --subject flag", "--subject")
        result = run(store, canonical, k, job.privacy if job else PrivacyConfig())
    typer.echo(json.dumps(result))


if __name__ == "__main__":
    typer.run(main)
