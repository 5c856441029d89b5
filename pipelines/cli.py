"""The ``expunge`` command: one program with a subcommand per job.

    expunge --help
    expunge demo
    expunge train --config infra/configs/synthetic.yaml
    expunge forget --config infra/configs/synthetic.yaml --subject user-7
    expunge scan --storage ./expunge-store --subject user-7
    expunge digest --subject user-7

Each subcommand is the ``main`` of a recipe module, which also runs as
``python -m expunge.pipelines.<job>`` (the form ``ray job submit`` uses). Recipes are imported only when
their subcommand runs, so ``expunge --help`` and ``expunge digest`` do not pay for torch, Ray
and MLflow imports. Exit codes are in ``EXIT_CODES`` and the README.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from typing import Any

#: What the light install (the HTTP client only, no ``server`` extra) prints instead of a traceback.
NEEDS_SERVER = (
    "error: the expunge command needs the server install: from a checkout, pip install '.[server]' "
    "-c constraints.txt (the README's install)"
)
#: Top-level modules of the ``server`` extra that every job needs (checked without importing them).
_SERVER_MODULES = ("click", "typer", "rich", "yaml", "numpy", "pyarrow", "torch", "ray", "mlflow")

if any(importlib.util.find_spec(name) is None for name in _SERVER_MODULES):
    print(NEEDS_SERVER, file=sys.stderr)
    raise SystemExit(2)

import click  # noqa: E402
import typer  # noqa: E402

__all__ = ["EXIT_CODES", "EXIT_INTERNAL", "JOBS", "NEEDS_SERVER", "SUBJOBS", "app", "main"]

#: Subcommand -> (recipe module, one-line help). The help is kept here so that listing the
#: jobs imports none of them.
JOBS: dict[str, tuple[str, str]] = {
    "demo": ("expunge.pipelines.demo", "Train on generated ratings, forget one subject, prove the result exact."),
    "train": ("expunge.pipelines.train", "Train every shard in parallel and publish a new model version."),
    "ingest": (
        "expunge.pipelines.ingest",
        "Add a batch of new rows: only the shards that receive rows retrain, from their new slice.",
    ),
    "forget": (
        "expunge.pipelines.forget",
        "Erase subjects: delete their rows, retrain only the shards that held them.",
    ),
    "scan": ("expunge.pipelines.scan", "Look for any trace of a subject in every object version of a store."),
    "verify": (
        "expunge.pipelines.verify",
        "Verify an erasure (re-derivation, scans, membership audit) or the receipt log.",
    ),
    "serve": (
        "expunge.pipelines.serve",
        "Run the erasure service (warm coordinator + shard actors) on Ray for the SDK; --stop ends it.",
    ),
    "readmit": (
        "expunge.pipelines.readmit",
        "Re-admit erased subjects who gave new consent (recorded, with a reason).",
    ),
    "digest": ("expunge.pipelines.digest", "Print the keyed digest of a subject id (to search MLflow and receipts)."),
    "recommend": (
        "expunge.pipelines.recommend",
        "Top-k items a subject has not rated, from the published exact ensemble.",
    ),
    "tokens": (
        "expunge.pipelines.tokens:list_tokens",
        "HTTP API tokens: `create --scope S --name CLIENT` (shown once), `list`, `revoke TOKEN_ID`.",
    ),
    "requests": (
        "expunge.pipelines.gdpr_requests",
        "Erasure requests and their GDPR clock (`--state late|pending|done|failed`); `export --format csv|json`.",
    ),
    "chaos": (
        "expunge.pipelines.chaos",
        "Seeded fault campaign: S3 faults, kills and rival writers around the service; checks every request.",
    ),
    "benchmark": (
        "expunge.pipelines.benchmark",
        "Benchmarks: `erasure` (the default), `accuracy`, `scale`, `service`, `ingest`, `profile` "
        "(`expunge benchmark SUB --help`).",
    ),
}

#: Jobs with sub-jobs (``expunge benchmark accuracy --data ...``). The bare job (``expunge benchmark
#: --data ...``) still runs its JOBS recipe, which is also its first sub-job here.
SUBJOBS: dict[str, dict[str, tuple[str, str]]] = {
    "tokens": {
        "list": ("expunge.pipelines.tokens:list_tokens", "Every token (never a secret), revoked ones included."),
        "create": ("expunge.pipelines.tokens:create", "A new token with the given scopes; printed once."),
        "revoke": ("expunge.pipelines.tokens:revoke", "Revoke a token by its id."),
    },
    "requests": {
        "export": (
            "expunge.pipelines.gdpr_requests:export",
            "Every request for the privacy officer: id, ticket, received, due, done, state, evidence link.",
        ),
    },
    "benchmark": {
        "erasure": ("expunge.pipelines.benchmark", "Erasure speed-ups and test RMSE of MF ensembles against S and R."),
        "accuracy": (
            "expunge.pipelines.benchmark_accuracy",
            "RMSE, MAE, NDCG@10, Recall@10 of each model family against S.",
        ),
        "scale": (
            "expunge.pipelines.benchmark_scale",
            "Training, erasure and memory from 10^5 to 10^7 rows with S in {8, 32}.",
        ),
        "service": (
            "expunge.pipelines.benchmark_service",
            "Erasure latency through the warm service (vs cold CLI and monolith), then 10,000 requests of load.",
        ),
        "ingest": (
            "expunge.pipelines.benchmark_ingest",
            "Daily ingests on data split by time: cost against a full retrain, exactness, NDCG@10 and RMSE.",
        ),
        "profile": (
            "expunge.pipelines.benchmark_profile",
            "Where the time of one cold (fresh CLI process) and one warm erasure goes, by stage, wall and CPU.",
        ),
    },
}

#: The one table of exit codes, shared by every subcommand (README: "Exit codes").
EXIT_CODES: dict[int, str] = {
    0: "success: every named subject was found and erased; scan found nothing; verify passed; demo proved exactness",
    1: "a check failed: scan found a trace of the subject, verify found a failed check, the demo's checks failed, a request of `benchmark service`'s load did not complete, or `chaos` found a violation",
    2: "bad input or configuration (typed error, message says how to fix it); nothing was changed",
    3: "forget: at least one named subject had no data (a receipt is still printed and stored)",
    4: "retryable failure: another writer published first or holds the store (its lease names the host and pid), a shard actor died, Ray could not start, or the store, the tracking server or the erasure service could not be reached; submit the same request again (the retry finishes or redoes it)",
    5: "internal error: a bug in Expunge (traceback printed); please report it",
}

EXIT_INTERNAL = 5


def flowing_help(doc: str | None) -> str | None:
    """A job's docstring with each paragraph's lines joined (bullet lines kept apart).

    Typer keeps a docstring's line breaks inside a paragraph, and the help then breaks sentences
    in the middle of a line wherever the source wrapped them.
    """
    if not doc:
        return doc
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            text = line.strip()
            if lines and text and not text.startswith(("- ", "* ")):
                lines[-1] = f"{lines[-1]} {text}"
            else:
                lines.append(text)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


class _LazyJobs(click.Group):
    """A click group that imports a recipe only when its subcommand is invoked (click's lazy-group pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(JOBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in JOBS:
            return None
        module_name, help_text = JOBS[cmd_name]

        # Typer parses the job's own options (typer ships its own click), so this command only
        # passes its arguments through, --help included.
        @click.command(
            cmd_name,
            help=help_text,
            add_help_option=False,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )
        @click.pass_context
        def job(job_ctx: click.Context) -> None:
            name, module, args = cmd_name, module_name, list(job_ctx.args)
            if args and args[0] in SUBJOBS.get(cmd_name, {}):
                name, module, args = f"{cmd_name} {args[0]}", SUBJOBS[cmd_name][args[0]][0], args[1:]
            module, _, function = module.partition(":")  # "module:function" names one of several jobs
            recipe = importlib.import_module(module)
            single = typer.Typer(
                add_completion=False,
                pretty_exceptions_enable=False,
                context_settings={"help_option_names": ["-h", "--help"]},
            )
            entry = getattr(recipe, function or "main")
            single.command(name, help=flowing_help(entry.__doc__))(entry)
            try:
                typer.main.get_command(single).main(args=args, prog_name=f"expunge {name}")
            except Exception:
                # Typed errors never get here (each recipe turns them into exit 2 or 4): this is a bug.
                traceback.print_exc()
                click.echo(
                    f"expunge {name}: internal error (a bug in Expunge, not in your input); please report it "
                    "with the traceback above",
                    err=True,
                )
                sys.exit(EXIT_INTERNAL)

        return job

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Jobs"):
            formatter.write_dl([(name, help_text) for name, (_, help_text) in JOBS.items()])
        with formatter.section("Exit codes"):
            formatter.write_dl([(str(code), meaning) for code, meaning in EXIT_CODES.items()])


@click.group(
    cls=_LazyJobs,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Expunge: exact machine unlearning (SISA) on Ray with MLflow lineage. Erase a person's rows and "
        "their influence on every trained model; prove it. Run `expunge JOB --help` for a job's options."
    ),
)
@click.version_option(package_name="expunge", prog_name="expunge")
def app() -> None:
    """The ``expunge`` program (a click group; subcommands are loaded lazily)."""


def main(args: Any = None) -> None:
    """Console-script entry point (``expunge`` in pyproject.toml)."""
    app.main(args=args, prog_name="expunge")


if __name__ == "__main__":
    main()
