"""Scratch folders for model files being logged, kept where the next open finds and removes them.

A killed process cannot clean up after itself, and a model being logged holds a copy of every
constituent's weights: left in the system temp folder, a pre-erasure copy would outlive the
erasure. So staging folders live under one known root per tracking store (beside a sqlite
database, else a per-user folder in the temp directory), are named after their process, and
every ``Lineage`` open removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from expunge.orchestrator.processes import process_alive

__all__ = ["STAGING_FOLDER", "Staging"]

log = logging.getLogger(__name__)

#: Name of the staging root beside a sqlite tracking database (and the prefix of the one in the temp dir).
STAGING_FOLDER = ".expunge-staging"


class Staging:
    """``<root>/<host>-<pid>-<random>/``: one folder per model being logged, removed when done or on next open."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._host = socket.gethostname().replace("-", "_")

    @classmethod
    def for_tracking(cls, uri: str) -> Staging:
        if uri.startswith("sqlite:///"):
            return cls(Path(uri.removeprefix("sqlite:///")).resolve().parent / STAGING_FOLDER)
        uid = os.getuid() if hasattr(os, "getuid") else 0
        return cls(Path(tempfile.gettempdir()) / f"{STAGING_FOLDER.lstrip('.')}-{uid}")

    @contextmanager
    def folder(self) -> Iterator[Path]:
        """A fresh folder for this process, removed on exit (and by ``sweep`` if the process dies first)."""
        folder = self.root / f"{self._host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True, mode=0o700)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.root.rmdir()  # only when empty: no stray folder beside the user's database

    def sweep(self) -> list[Path]:
        """Remove the folders left by dead processes of this host; returns what was removed."""
        if not self.root.is_dir():
            return []
        removed = []
        for folder in sorted(self.root.iterdir()):
            host, _, rest = folder.name.partition("-")
            pid = rest.partition("-")[0]
            if host != self._host or not pid.isdigit() or process_alive(int(pid)):
                continue  # another machine's, or a live process's: not ours to judge
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        if removed:
            log.warning("removed %d staging folder(s) left by interrupted model logging in %s", len(removed), self.root)
        return removed
