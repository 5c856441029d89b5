"""Recipe: print the keyed digest of subject ids, so a privacy engineer can find their records.

    expunge digest --subject user-45                       # key from EXPUNGE_SUBJECT_KEY
    expunge digest --subject user-45 --workdir expunge-demo  # the demo's own key
    expunge digest --subject user-45 --storage s3://bucket/expunge   # also checks the key

Digests are HMAC-SHA256 of the subject id under the deployment's key: the only form in which a
subject appears in manifests, receipts, logs and MLflow (search runs with
``tags.`expunge.subject_digest.<digest>` = 'erased'``; docs/mlflow-ui.md). Without the key a
digest reveals nothing, and the key never leaves the process.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from expunge.orchestrator.config import PrivacyConfig, StorageConfig, load_job_config
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.pipelines._runtime import demo_hasher, exit_on_error, hasher_from_env, init_logging, key_configured

__all__ = ["main", "run"]


def _hasher(privacy: PrivacyConfig, workdir: Path | None) -> SubjectHasher:
    if workdir is None:
        return hasher_from_env(privacy)
    if not workdir.is_dir():  # a typo: even with the key exported, a digest "of the demo" there means nothing
        raise ConfigError(
            f"--workdir {workdir} is not a folder: it names the folder of `expunge demo` (its key and store). "
            "Run the demo first, or pass the folder it used."
        )
    if not key_configured(privacy) and not (workdir / "subject.key").is_file():
        raise ConfigError(
            f"{workdir / 'subject.key'} does not exist: --workdir names the folder of `expunge demo`, which keeps "
            f"its generated key there. Run the demo first, or set {privacy.subject_key_env} instead."
        )
    return demo_hasher(workdir, privacy)  # the demo's own rule: the environment's key first, else its file


def run(
    subjects: list[str],
    privacy: PrivacyConfig = PrivacyConfig(),
    workdir: Path | None = None,
    storage: StorageConfig | None = None,
) -> dict[str, str]:
    """Subject id -> digest. With ``storage`` (or ``workdir``'s store), the key is checked against the store's first.

    Raises:
        ConfigError: no subject, no key, or a key other than the one the store was trained with.
    """
    if not subjects:
        raise ConfigError("name at least one subject with --subject ID")
    hasher = _hasher(privacy, workdir)
    if storage is None and workdir is not None and (workdir / "store").exists():
        # The demo's store knows its key: a digest under any other key (an exported
        # EXPUNGE_SUBJECT_KEY that is not the one the demo used) would name nobody.
        storage = StorageConfig(uri=str(workdir / "store"))
    if storage is not None:
        from expunge.orchestrator.session import published

        published(storage, hasher)
    return {subject: hasher.digest(subject) for subject in subjects}


def main(
    subject: list[str] = typer.Option([], "--subject", help="subject id (repeatable)"),
    config: Path | None = typer.Option(None, help="job config YAML (for privacy.subject_key_env and storage)"),
    storage: str | None = typer.Option(None, help="storage URI: check the key against this store first"),
    workdir: Path | None = typer.Option(
        None, help="use the demo's key, as `expunge demo --workdir` does (the environment's key if set, else its file)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print {subject: digest} as JSON"),
) -> None:
    """Print the keyed digest of each subject id (one per line), as stored in MLflow and receipts."""
    init_logging()
    with exit_on_error():  # bad input 2; a store that cannot be reached 4
        job = load_job_config(config) if config else None
        store = None
        if storage or job:
            store = job.storage if job else StorageConfig(uri=storage or "")
            if storage:
                store = store.model_copy(update={"uri": storage})
        digests = run(subject, job.privacy if job else PrivacyConfig(), workdir, store)
    if as_json:
        typer.echo(json.dumps(digests))
    else:
        for digest in digests.values():
            typer.echo(digest)


if __name__ == "__main__":
    typer.run(main)
