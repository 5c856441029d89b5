"""Recipe: the service's erasure requests and their GDPR clock, read from the store's journal.

    expunge requests --config job.yaml --state late            # pending past their due date
    expunge requests --config job.yaml --state pending --due-before 2026-12-31
    expunge requests export --config job.yaml --format csv --output requests.csv

A request is due one calendar month after it was received (GDPR Art. 12(3)), later when
extended. ``export`` gives the privacy officer one row per request: request id, ticket,
received, due, done, state, late and the evidence link, with no subject id or digest. Reads only:
it runs beside a running service. The evidence link is the HTTP API's
(``--api-url``, default the URL ``expunge serve`` recorded on this machine), else the
``expunge verify`` command that writes the report.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import typer

from expunge.client.models import Erasure
from expunge.orchestrator.catalog import Catalog, require_published
from expunge.orchestrator.config import PrivacyConfig
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.errors import ConfigError
from expunge.orchestrator.service.board import RequestBoard
from expunge.orchestrator.service.journal import Journal
from expunge.orchestrator.service.lifecycle import Lifecycle
from expunge.pipelines._head import read_state
from expunge.pipelines._runtime import exit_on_error, init_logging, job_and_store, key_configured
from expunge.pipelines.serve import state_file
from expunge.shards.errors import StorageCorruptError
from expunge.shards.store import ObjectStore

__all__ = ["EXPORT_COLUMNS", "export", "export_rows", "main", "requests"]

#: What the export holds, in order: nothing that names or digests a person.
EXPORT_COLUMNS = ("request_id", "ticket", "received_at", "due_at", "done_at", "state", "late", "extension_months",
                  "evidence")  # fmt: skip

_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_CONFIG = typer.Option(None, help="job config YAML (storage, privacy, service namespace)")
_STORAGE = typer.Option(None, help="storage URI (overrides the config)")
_STATE = typer.Option(None, help="pending, late (pending past due), done or failed")
_DUE = typer.Option(None, "--due-before", help="only requests due before this ISO 8601 date or time")


def requests(
    storage_uri: str, privacy: PrivacyConfig, state: str | None, due_before: str | None, ticket: str | None = None
) -> list[Erasure]:
    """The journal's requests matching the filters, oldest received first.

    Raises:
        ConfigError: no trained store at ``storage_uri``, an unknown state, a bad date, or ``ticket``
            without the subject key configured.
    """
    store = ObjectStore(storage_uri)
    with contextlib.suppress(StorageCorruptError):  # a damaged newest manifest: the register needs no model
        require_published(Catalog(store))  # a path that holds no store is not an empty register
    journal = Journal(store)
    if ticket is not None and not key_configured(privacy):
        raise ConfigError("finding a request by ticket needs the store's key: set EXPUNGE_SUBJECT_KEY (or its file)")
    hasher = SubjectHasher.from_settings(privacy) if key_configured(privacy) else SubjectHasher(b"\0" * 32)
    lifecycle = Lifecycle(journal, hasher, RequestBoard(journal, threading.Condition(), store.uri))
    return lifecycle.list(datetime.now(UTC), state, due_before, ticket)


def export_rows(views: list[Erasure], api_url: str | None) -> list[dict[str, str]]:
    """One row per request with ``EXPORT_COLUMNS`` (text), for the privacy officer's register."""
    rows = []
    for view in views:
        evidence = (
            f"{api_url.rstrip('/')}/v1/erasures/{view.request_id}/evidence"
            if api_url
            else f"expunge verify --request {view.request_id}"
        )
        rows.append(
            {
                "request_id": view.request_id,
                "ticket": view.ticket or "",
                "received_at": view.received_at,
                "due_at": view.due_at,
                "done_at": view.done_at or "",
                "state": view.state,
                "late": "yes" if view.late else "no",
                "extension_months": str(view.extension.months) if view.extension else "",
                "evidence": evidence if view.committed_at else "",
            }
        )
    return rows


def _cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting like a formula gets a leading quote (OWASP CSV injection)."""
    return f"'{text}" if text.startswith(_FORMULA) else text


def _job(config: Path | None, storage: str | None) -> tuple[str, PrivacyConfig, str]:
    job, store = job_and_store(config, storage)
    return store.uri, job.privacy if job else PrivacyConfig(), job.service.namespace if job else "expunge"


def main(
    config: Path | None = _CONFIG,
    storage: str | None = _STORAGE,
    state: str | None = _STATE,
    due_before: str | None = _DUE,
    ticket: str | None = typer.Option(None, help="only the requests filed under this ticket"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """List erasure requests with their GDPR clock (JSON on stdout); late ones are also warned about on stderr.

    Also: `expunge requests export --format csv|json [--output FILE]`, the privacy officer's register.
    """
    init_logging(verbose)
    with exit_on_error():
        uri, privacy, _ = _job(config, storage)
        views = requests(uri, privacy, state, due_before, ticket)
    late = [v for v in views if v.late and v.state != "done" and v.stage != "failed"]
    typer.echo(json.dumps([v.model_dump(exclude={"subject_digests"}) for v in views], indent=1))
    if late:
        typer.echo(f"warning: {len(late)} request(s) pending past their due date", err=True)


def export(
    config: Path | None = _CONFIG,
    storage: str | None = _STORAGE,
    format: Literal["csv", "json"] = typer.Option("csv", "--format", help="csv or json"),
    output: Path | None = typer.Option(None, help="file to write (default: stdout)"),
    state: str | None = _STATE,
    api_url: str | None = typer.Option(None, help="the HTTP API's URL, for evidence links (default: recorded)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Export every request for the privacy officer: id, ticket, received, due, done, state, late, evidence."""
    init_logging(verbose)
    with exit_on_error():
        uri, privacy, namespace = _job(config, storage)
        url = api_url or (read_state(state_file(namespace)) or {}).get("url")
        rows = export_rows(requests(uri, privacy, state, None), url)
        if format == "json":
            text = json.dumps(rows, indent=1) + "\n"
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows([{k: _cell(v) for k, v in row.items()} for row in rows])
            text = buffer.getvalue()
        if output is None:
            typer.echo(text, nl=False)
        else:
            try:
                output.write_text(text)
            except OSError as exc:
                raise ConfigError(f"cannot write {output}: {exc.strerror}; choose another --output") from None
    if output is not None:
        typer.echo(f"{len(rows)} request(s) written to {output}", err=True)
