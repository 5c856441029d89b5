"""Scan beside the store: log folders line by line, and the params and tags of the store's MLflow registry.

Both are searched for the raw id by the bounded token rule (``trace_rule``); the keyed digest
is not looked for here, since erasure runs name erased subjects by digest on purpose.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.errors import ExpungeError
from expunge.orchestrator.evidence.scan import Finding, FindingKind
from expunge.orchestrator.evidence.trace_rule import (
    holds_token,
    is_field_name,
    is_generated_field,
    is_number_text,
    object_key_holds,
)
from expunge.orchestrator.registry.checks import AuditView
from expunge.orchestrator.registry.tracking import same_store
from expunge.shards.identity import canonical_subject_id

__all__ = ["mlflow_value_searched", "scan_logs", "scan_registry_text"]

log = logging.getLogger(__name__)

_BINARY_PROBE = 8192
#: MLflow's own tags (source, user, run name, logged model ids) hold no caller text; a run's
#: description, typed by a person in the UI, does.
_MLFLOW_OWN = "mlflow."
_MLFLOW_NOTE = "mlflow.note.content"


_EXPUNGE_OWN = "expunge."
_PLACEHOLDERS = frozenset({"true", "false", "none"})


def mlflow_value_searched(key: str, value: str) -> bool:
    """Whether an MLflow param or tag value is searched for the id (pure).

    Not searched: MLflow's own tags (``mlflow.*``) but the description (``mlflow.note.content``);
    generated fields (``trace_rule.is_generated_field`` on the key: ``expunge.kind``,
    ``registry_version_before``); Expunge's own flags and placeholders (``expunge.*`` tags whose
    value is ``true``, ``false`` or ``none``); and numbers, since MLflow keeps every number as text
    (``"subjects": "1"`` counts people, ``"seed": "0"`` is a setting).
    """
    if key.startswith(_MLFLOW_OWN) and key != _MLFLOW_NOTE:
        return False
    if key.startswith(_EXPUNGE_OWN) and value.strip().lower() in _PLACEHOLDERS:
        return False  # Expunge's own flags and placeholders (expunge.purged=true, expunge.request_id=none)
    return not is_generated_field(key) and not is_number_text(value)


def _entry_traces(entries: Mapping[str, str], subject_id: str, label: str) -> list[str]:
    """Where in one run's params (or tags) the id is: ``param request_id``, ``tag <key 3>`` (a data key)."""
    found = []
    for position, (key, value) in enumerate(sorted(entries.items()), start=1):
        named = is_field_name(key)
        where = f"{label} {key}" if named else f"{label} <key {position}>"
        if not named and holds_token(key, subject_id):
            found.append(f"{where} (the key itself)")
        if mlflow_value_searched(key, value):
            as_object = object_key_holds(value, subject_id)
            if as_object if as_object is not None else holds_token(value, subject_id):
                found.append(where)
    return found


def scan_registry_text(view: AuditView, subject_id: str) -> tuple[tuple[Finding, ...], int, int]:
    """Search the params and tags of the store's runs, and the tags of its model versions, for the raw id.

    Runs are those of the view's experiment whose ``expunge.storage`` tag names the view's
    store, or that record a version this store published for the same request (made before the
    store moved); model versions are every version of its registered model (and the model's own tags).

    Returns:
        (findings, runs searched, model versions searched).

    Raises:
        InvalidSubjectIdError: ``subject_id`` is refused by the identity rule.
    """
    subject_id = canonical_subject_id(subject_id)
    findings: list[Finding] = []

    def add(key: str, kind: FindingKind, places: Iterable[str]) -> None:
        for where in places:
            findings.append(
                Finding(
                    key=key,
                    version_id=None,
                    kind=kind,
                    detail="the id in an MLflow param or tag",
                    rule="bounded-token",
                    location=where,
                )
            )

    runs: list[Any] = []
    if view.experiment_id is not None:
        history: dict[int, str | None] = {}
        found = _pages(view.client.search_runs, 1000, experiment_ids=[view.experiment_id])
        runs = [r for r in found if _ours(view, r, history)]
    for run in runs:
        key = f"runs:/{run.info.run_id}"
        add(key, "mlflow-run", _entry_traces(dict(run.data.params), subject_id, "param"))
        add(key, "mlflow-run", _entry_traces(dict(run.data.tags), subject_id, "tag"))
    name = view.binding.model_name
    versions: list[Any] = []
    from mlflow.exceptions import MlflowException

    try:
        model = view.client.get_registered_model(name)
    except MlflowException:
        model = None  # never registered: no versions either
    if model is not None:
        add(f"models:/{name}", "mlflow-model", _entry_traces(dict(model.tags or {}), subject_id, "tag"))
        versions = list(_pages(view.client.search_model_versions, 200, filter_string=f"name = '{_quoted(name)}'"))
    for version in versions:
        add(
            f"models:/{name}/{version.version}",
            "mlflow-model",
            _entry_traces(dict(version.tags or {}), subject_id, "tag"),
        )
    log.info(
        "searched %d MLflow run(s) and %d model version(s): %d finding(s)", len(runs), len(versions), len(findings)
    )
    return tuple(findings), len(runs), len(versions)


def _ours(view: AuditView, run: Any, history: dict[int, str | None]) -> bool:
    """Whether ``run`` records this store: tagged with it, or with the place it moved from (a run of a
    version this store published, for the same request). ``history``: version -> request id, filled as read."""
    tags = run.data.tags
    if same_store(str(tags.get("expunge.storage", "")), view.store.uri):
        return True
    number = str(tags.get("expunge.ensemble_version", ""))
    if not number.isdigit():
        return False
    version = int(number)
    if version not in history:
        catalog = Catalog(view.store)
        try:
            history[version] = (catalog.read(version).request_id or "none") if catalog.has(version) else None
        except ExpungeError:  # unreadable here: the run is not placed in this store's history
            history[version] = None
    return history[version] is not None and history[version] == tags.get("expunge.request_id", "none")


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")


def _pages(search: Any, page_size: int, **kwargs: Any) -> Iterator[Any]:
    token = None
    while True:
        page = search(**kwargs, max_results=page_size, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _files(folders: Sequence[str | Path]) -> Iterator[Path]:
    """Every regular file under the folders (or the files named), each once, in name order.

    Linked folders are followed (a log folder linked to another disk is read, not skipped), each
    real folder once, so a loop of links ends. Read only: nothing here writes or deletes.
    """
    seen: set[str] = set()
    walked: set[str] = set()
    for folder in folders:
        root = Path(folder)
        candidates = [root] if root.is_file() else _walk(root, walked)
        for path in candidates:
            real = os.path.realpath(path)
            if real not in seen and path.is_file():
                seen.add(real)
                yield path


def _walk(root: Path, walked: set[str]) -> Iterator[Path]:
    """The files under ``root``, links to folders followed, a real folder in ``walked`` not entered again."""
    for base, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(base)
        if real in walked:
            subfolders[:] = []
            continue
        walked.add(real)
        subfolders.sort()
        yield from (Path(base) / name for name in sorted(names))


def scan_logs(folders: Sequence[str | Path], subject_id: str) -> tuple[tuple[Finding, ...], int, int]:
    """Search every text file under ``folders`` (recursively) line by line for the raw id (bounded token rule).

    Binary files (a NUL byte in the first 8 KiB) are skipped; text is read as UTF-8, bad bytes
    replaced. A finding's key is the file's path, its location the line number.

    Returns:
        (findings, files searched, lines searched).

    Raises:
        FileNotFoundError: a folder does not exist (a mistyped --logs must not read as clean).
        InvalidSubjectIdError: ``subject_id`` is refused by the identity rule.
    """
    subject_id = canonical_subject_id(subject_id)
    for folder in folders:
        if not Path(folder).exists():
            raise FileNotFoundError(f"no log folder or file at {folder}")
    findings: list[Finding] = []
    files = lines = 0
    for path in _files(folders):
        with path.open("rb") as stream:
            if b"\0" in stream.read(_BINARY_PROBE):
                continue
            stream.seek(0)
            files += 1
            for number, raw in enumerate(stream, start=1):
                lines += 1
                if holds_token(raw.decode("utf-8", errors="replace"), subject_id):
                    findings.append(
                        Finding(
                            key=str(path),
                            version_id=None,
                            kind="log",
                            detail="the id in a log line",
                            rule="bounded-token",
                            location=f"line {number}",
                        )
                    )
    log.info("searched %d log file(s), %d line(s): %d finding(s)", files, lines, len(findings))
    return tuple(findings), files, lines
