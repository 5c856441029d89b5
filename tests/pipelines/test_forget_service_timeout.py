"""`expunge forget --service` gives up waiting after --timeout (exit 4), the request going on."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from expunge.orchestrator.errors import ErasureWaitTimeout
from expunge.pipelines import forget as forget_recipe


def test_a_service_that_waits_for_its_store_does_not_hang_the_cli(monkeypatch):
    # Adversarial review: a service now waits out a store that does not answer instead of failing
    # the batch after 10 s, and `forget --service` waited with no limit.
    asked: list[float | None] = []

    class Waiting:
        def forget(self, subjects, *, idempotency_key=None, reason=None, ticket=None, timeout=None):
            asked.append(timeout)
            raise ErasureWaitTimeout(f"request not committed within {timeout} s; it goes on")

        def close(self) -> None:
            pass

    monkeypatch.setattr("expunge.orchestrator.client.RayClient.connect", lambda **kwargs: Waiting())
    app = typer.Typer()
    app.command()(forget_recipe.main)
    common = ["--service", "--address", "127.0.0.1:1", "--subject", "user-1"]
    result = CliRunner().invoke(app, common)
    assert result.exit_code == 4, result.output
    assert "it goes on" in result.output
    assert CliRunner().invoke(app, [*common, "--timeout", "5"]).exit_code == 4
    assert asked == [600.0, 5.0]
