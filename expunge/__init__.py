"""Expunge: exact machine unlearning (SISA training on Ray, MLflow lineage) for the GDPR right to erasure.

The public API is what ``__all__`` lists, imported from here (``from expunge import Client``),
plus the model-author interface of ``expunge.shards.models`` (``SisaModel``) and the column
names of ``expunge.shards.rows``. Every other module under ``expunge.orchestrator``,
``expunge.shards`` and ``expunge.pipelines`` is internal and may change without notice.

Names are imported on first use, so ``import expunge`` loads neither torch, Ray nor MLflow, and
``from expunge import Client`` (the HTTP client, ``expunge.client``) needs only httpx and pydantic:
the base install, without the ``server`` extra. ``RayClient`` is the in-cluster Ray-driver SDK.
The design card's folders (``orchestrator/``, ``shards/``, ``pipelines/``) sit at the root of
a checkout and install as ``expunge.orchestrator``, ``expunge.shards`` and ``expunge.pipelines``
(``pyproject.toml``, ``package-dir``); they cannot be imported under their folder names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "ArtifactStoreNotErasable",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConfigError",
    "Coordinator",
    "CustomModelConfig",
    "DataConfig",
    "DataValidationError",
    "ErasedSubjectsInDataError",
    "ErasureReceipt",
    "ErasureWaitTimeout",
    "ExpungeError",
    "IdempotencyConflictError",
    "IngestConfig",
    "IngestReceipt",
    "InvalidSubjectIdError",
    "ItemStatsConfig",
    "JobConfig",
    "LineagePurgeFailed",
    "MFConfig",
    "MLPConfig",
    "MembershipAudit",
    "PermissionDeniedError",
    "PersonalDataInTextError",
    "PrivacyConfig",
    "PurgedVersionError",
    "RayClient",
    "ServiceConfig",
    "ServiceUnavailableError",
    "ShardRetrainFailed",
    "ShardStartTimeout",
    "ShardingConfig",
    "StorageConfig",
    "StorageConflictError",
    "StorageCorruptError",
    "StorageUnavailableError",
    "SubjectHasher",
    "TrackingConfig",
    "TrackingUnreachable",
    "TrainingConfig",
    "UnknownRequestError",
    "UnknownSubjectError",
    "VerifyReport",
    "__version__",
    "load_job_config",
    "verify_erasure",
]

_HOMES = {
    "AsyncClient": "expunge.client",
    "Client": "expunge.client",
    "RayClient": "expunge.orchestrator.client",
    "Coordinator": "expunge.orchestrator.coordinator",
    "ErasureReceipt": "expunge.orchestrator.receipts",
    "IngestReceipt": "expunge.orchestrator.receipts",
    "MembershipAudit": "expunge.orchestrator.evidence.membership",
    "SubjectHasher": "expunge.orchestrator.digests",
    "VerifyReport": "expunge.orchestrator.evidence.report",
    "verify_erasure": "expunge.orchestrator.evidence.verify",
    **dict.fromkeys(
        [
            "CustomModelConfig",
            "DataConfig",
            "IngestConfig",
            "ItemStatsConfig",
            "JobConfig",
            "MFConfig",
            "MLPConfig",
            "PrivacyConfig",
            "ServiceConfig",
            "ShardingConfig",
            "StorageConfig",
            "TrackingConfig",
            "TrainingConfig",
            "load_job_config",
        ],
        "expunge.orchestrator.config",
    ),
}

_FOLDERS = ("orchestrator", "shards", "pipelines")


class _SourceTree(importlib.abc.MetaPathFinder):
    """Finds ``expunge.<folder>`` in the folders beside this package, when running from a checkout.

    An installed wheel holds them inside ``expunge/``; an editable install maps them with
    setuptools' own finder. This one covers a checkout used without installing, e.g. a Ray
    job's uploaded ``--working-dir``, whose ``expunge/`` would otherwise shadow the installed one.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        parent, _, folder = fullname.partition(".")
        if parent != __name__ or folder not in _FOLDERS:
            return None
        init = self.root / folder / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def _mount_checkout() -> None:
    here = Path(__file__).resolve().parent
    root = here.parent
    if (here / "orchestrator").is_dir() or not (root / "orchestrator" / "__init__.py").is_file():
        return  # an installed wheel: the folders are inside this package
    if not any(isinstance(f, _SourceTree) for f in sys.meta_path):
        # First: an editable install's finder would otherwise answer with the folders of the
        # tree it was installed from, mixing this checkout's expunge/ with another's code.
        sys.meta_path.insert(0, _SourceTree(root))


_mount_checkout()


def _version() -> str:
    try:
        return importlib.metadata.version("expunge")
    except importlib.metadata.PackageNotFoundError:  # a checkout used without installing
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    if name in __all__:
        return getattr(importlib.import_module("expunge.orchestrator.errors"), name)
    raise AttributeError(f"module 'expunge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
