"""The loader of a purged model version's notice: loading it raises, naming the erasure and the version to use.

When Expunge purges a model version it deletes every stored copy of the version's files and
leaves in their place a notice of three small files (``orchestrator/registry/purge_notice.py``):
``MLmodel`` (a ``python_function`` flavor whose loader is this module), ``code/<this file>`` and
``purged.json``. ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` then runs
``_load_pyfunc`` below instead of failing with a bare "No such artifact". The notice holds no
personal data: the model name, the versions, the erasure request id and the sentence to show.

This file is copied into the notice as it is, and imported there by a plain MLflow user who may
not have Expunge installed: it imports only the standard library, and Expunge's
``PurgedVersionError`` when it is there.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["NOTICE_FIELDS", "PurgedModelVersion", "purged_error"]

#: The keys of ``purged.json``, in the order ``PurgedVersionError`` takes them.
NOTICE_FIELDS = ("model_name", "version", "request_id", "use_version", "alias")


class PurgedModelVersion(RuntimeError):
    """Raised in place of ``PurgedVersionError`` where Expunge is not installed; same message."""


def purged_error(notice: dict[str, str]) -> Exception:
    """The error a load of the purged version raises: ``PurgedVersionError`` if importable, else ``PurgedModelVersion``.

    ``notice`` is ``purged.json`` as a dict (``NOTICE_FIELDS`` plus ``message``).
    """
    try:
        from expunge.orchestrator.errors import PurgedVersionError
    except ImportError:
        return PurgedModelVersion(notice["message"])
    return PurgedVersionError(*(str(notice[field]) for field in NOTICE_FIELDS))


def _load_pyfunc(data_path: str) -> None:
    """MLflow's pyfunc entry point (``loader_module``); ``data_path`` is the notice's ``purged.json``.

    Raises:
        PurgedVersionError: always (``PurgedModelVersion`` where Expunge is not installed).
    """
    raise purged_error(json.loads(Path(data_path).read_text(encoding="utf-8")))
