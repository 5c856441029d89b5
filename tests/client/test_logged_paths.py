"""The client logs its retries without the caller's references (a ticket or an idempotency key may name a case)."""

from __future__ import annotations

import pytest

from expunge.client._transport import logged_path


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/v1/erasures/DESK%2F2026%2F77", "/v1/erasures/{ref}"),
        ("/v1/erasures/GDPR-KEY-9/evidence", "/v1/erasures/{ref}/evidence"),
        ("/v1/erasures/case 7/extension", "/v1/erasures/{ref}/extension"),
        ("/v1/tokens/0123456789ab", "/v1/tokens/{token_id}"),
        ("/v1/erasures?state=late&ticket=DESK-1", "/v1/erasures"),
        ("/v1/recommendations", "/v1/recommendations"),
    ],
)
def test_a_retry_is_logged_by_route_never_by_reference(path, logged):
    assert logged_path(path) == logged
