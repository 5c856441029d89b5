"""The light SDK: ``Client`` and ``AsyncClient`` talk to an Expunge service's HTTP API (``/v1``).

Recommender services install it without torch and without Ray (``pip install expunge``, no
extra): this package imports only the standard library, httpx, pydantic, its wire models
(``expunge.client.models``) and the error classes (``expunge.orchestrator.errors``).

    from expunge import Client

    client = Client("http://127.0.0.1:8470", token)
    erasure = client.forget(["user-7"], ticket="GDPR-2026-0042")   # returns once committed
    top = client.recommend("user-8", k=10)
    added = client.ingest({"record_id": ["r-9"], "subject_id": ["user-8"], "item_id": [3], "rating": [4.0]})

The Ray-driver SDK for code inside the cluster is ``expunge.RayClient`` (the server install).
"""

from __future__ import annotations

from expunge.client._async import AsyncClient
from expunge.client._sync import Client
from expunge.client.models import (
    Erasure,
    ErasureAccepted,
    ErasureList,
    Extension,
    Health,
    Ingestion,
    TokenCreated,
    TokenInfo,
)

__all__ = [
    "AsyncClient",
    "Client",
    "Erasure",
    "ErasureAccepted",
    "ErasureList",
    "Extension",
    "Health",
    "Ingestion",
    "TokenCreated",
    "TokenInfo",
]
