"""Recipe: the HTTP API's bearer tokens, kept in the store as salted hashes.

    expunge tokens create --config job.yaml --scope erasure:submit --scope erasure:read --name recsys-prod
    expunge tokens list --config job.yaml
    expunge tokens revoke --config job.yaml 3f9c0a1b2c4d

``create`` prints the token once (JSON on stdout); only its salted hash is stored, so it cannot
be shown again: a lost token is revoked and replaced. Scopes: ``erasure:submit``,
``erasure:read``, ``evidence:read``, ``recommend``, ``admin`` (readmission and tokens; it
implies no other scope). Whoever can write the store can make tokens: this is the operator's
command. A running service sees a new or revoked token within ``service.token_cache_s``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer

from expunge.client.models import SCOPES
from expunge.orchestrator.api.tokens import TokenRecord, TokenStore
from expunge.orchestrator.catalog import Catalog, require_published
from expunge.pipelines._runtime import exit_on_error, init_logging, job_and_store
from expunge.shards.errors import StorageCorruptError
from expunge.shards.store import ObjectStore

__all__ = ["create", "list_tokens", "revoke"]

_CONFIG = typer.Option(None, help="job config YAML (its storage holds the tokens)")
_STORAGE = typer.Option(None, help="storage URI (overrides the config)")
_SCOPE_HELP = f"a scope to grant (repeatable): {', '.join(SCOPES)}"


def _tokens(config: Path | None, storage: str | None) -> TokenStore:
    """The tokens of a trained store (ConfigError for a path that holds none: a typo is not an empty list)."""
    _, store = job_and_store(config, storage)
    objects = ObjectStore(store)
    # A damaged newest manifest: the store is there, and tokens need no model.
    with contextlib.suppress(StorageCorruptError):
        require_published(Catalog(objects))
    return TokenStore(objects)


def _shown(record: TokenRecord) -> dict[str, object]:
    return record.model_dump(exclude={"salt", "digest"})


def create(
    name: str = typer.Option(..., help="the client's name, shown in access logs (e.g. recsys-prod)"),
    scope: list[str] = typer.Option([], "--scope", help=_SCOPE_HELP),
    config: Path | None = _CONFIG,
    storage: str | None = _STORAGE,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Create a token with exactly these scopes; prints it once (it is stored only as a salted hash)."""
    init_logging(verbose)
    with exit_on_error():
        record, token = _tokens(config, storage).create(name, scope)
    typer.echo(json.dumps({**_shown(record), "token": token}, indent=1))
    typer.echo("store the token now: it is not shown again (a lost token is revoked and replaced)", err=True)


def list_tokens(
    config: Path | None = _CONFIG,
    storage: str | None = _STORAGE,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """List every token (id, name, scopes, created, revoked); never a secret.

    Also: `expunge tokens create --name CLIENT --scope S ...` (printed once) and `expunge tokens revoke ID`.
    """
    init_logging(verbose)
    with exit_on_error():
        records = _tokens(config, storage).list()
    typer.echo(json.dumps([_shown(r) for r in records], indent=1))


def revoke(
    token_id: str = typer.Argument(..., help="the token's id (`expunge tokens list`)"),
    config: Path | None = _CONFIG,
    storage: str | None = _STORAGE,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Revoke a token; a running service refuses it within service.token_cache_s seconds."""
    init_logging(verbose)
    with exit_on_error():
        record = _tokens(config, storage).revoke(token_id)
    typer.echo(json.dumps(_shown(record), indent=1))
