"""Request ids: what may name an erasure (they name stored receipts and MLflow runs)."""

from __future__ import annotations

import re

from expunge.orchestrator.errors import ConfigError

__all__ = ["REQUEST_ID", "check_request_id"]

#: What a request id may be (it names stored receipts and MLflow runs): see ``check_request_id``.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_request_id(request_id: str) -> str:
    """A request id names stored receipts and MLflow runs: 1-128 of ``A-Z a-z 0-9 . _ -``, not starting with . _ -.

    Raises:
        ConfigError: any other id (a path separator, a space, a quote, an empty id ...).
    """
    if not REQUEST_ID.fullmatch(request_id):
        raise ConfigError(
            f"request id {request_id!r} is not usable: use 1-128 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (e.g. a ticket number such as GDPR-2026-0042), or omit it to get a generated one"
        )
    return request_id
