"""The verify report: each check's outcome and figures, and the Markdown a privacy officer reads.

Also the Markdown of a receipt-log walk (``chain_markdown``). The checks themselves live in
``evidence.verify``; what each proves and cannot prove: docs/verification.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from expunge.orchestrator.evidence.membership import AuditRecord, ModelAudit
from expunge.orchestrator.evidence.receipt_chain import ChainReport

__all__ = ["CheckName", "CheckResult", "CheckStatus", "VerifyReport", "chain_markdown", "check_row"]

CheckName = Literal[
    "exactness", "state", "storage", "registry", "membership_audit", "receipt_log", "ingest_receipt", "shard_versions"
]
CheckStatus = Literal["passed", "failed", "skipped"]
_TITLES: dict[str, str] = {
    "exactness": "Exactness",
    "state": "Stored state",
    "storage": "Storage",
    "registry": "Registry",
    "membership_audit": "Membership audit",
    "receipt_log": "Receipt log",
    "ingest_receipt": "Ingest receipt",
    "shard_versions": "Shard versions",
}
_MARK = {"passed": "✅ passed", "failed": "❌ FAILED", "skipped": "➖ skipped"}


class CheckResult(BaseModel):
    """One check: its outcome, one plain sentence saying what was found, and the figures behind it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: CheckName
    status: CheckStatus
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)


class VerifyReport(BaseModel):
    """Everything ``expunge verify --request`` found; ``status`` is ``failed`` when any check failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str
    #: The service's shared commit the request was coalesced into (re-derived and checked as a
    #: whole; the scan and the figures are about the request's own subjects). None when it ran alone.
    batch_id: str | None = None
    storage: str
    checked_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    status: Literal["passed", "failed"]
    receipt_status: Literal["erased", "not_found"]
    subject_digests: tuple[str, ...]
    rows_removed: int
    affected_shards: tuple[int, ...]
    ensemble_version: int
    raw_id_checked: bool
    checks: tuple[CheckResult, ...]
    audit: AuditRecord | None = None
    #: MLflow runs the report was attached to (filled in after logging).
    mlflow_runs: tuple[str, ...] = ()
    #: For a request that found nobody: the requests whose erasure of its subjects stands (oldest first).
    erased_earlier_by: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def check(self, name: CheckName) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_markdown(self) -> str:
        """The report for a non-engineer: what was checked, what was found, what it means."""
        subjects = len(self.subject_digests)
        first = self.subject_digests[0][:12] + "…" if self.subject_digests else "none"
        more = f" and {subjects - 1} more" if subjects > 1 else ""
        outcome = (
            f"{self.rows_removed} row(s) were erased and shard(s) {', '.join(map(str, self.affected_shards))} retrained."
            if self.receipt_status == "erased"
            else "no data of them was found, so nothing was erased."
        )
        if self.erased_earlier_by:
            newest = self.erased_earlier_by[-1]
            outcome = (
                f"no data of them was found, so this request erased nothing: they had been erased earlier, by request "
                f"{', '.join(self.erased_earlier_by)} (`expunge verify --request {newest}` checks that erasure)."
            )
        lines = [
            f"# Erasure verification: request `{self.request_id}`: {'PASSED' if self.passed else 'FAILED'}",
            "",
            f"Checked {self.checked_at} against the store `{self.storage}` (published model version "
            f"v{self.ensemble_version}).",
            f"The request named {subjects} person(s) (keyed digest `{first}`{more}); {outcome}",
            *(
                [
                    f"The service coalesced it with other requests into the commit `{self.batch_id}`, which was "
                    "re-derived and checked as a whole; the scan looked for this request's subjects."
                ]
                if self.batch_id
                else []
            ),
            "The raw subject id was given, so the storage scan also looked for it in plain text."
            if self.raw_id_checked
            else "No raw subject id was given: the storage scan looked for the keyed digest only "
            "(pass --subject ID to also look for the id in plain text).",
            "",
            "| Check | Result | What was found |",
            "| --- | --- | --- |",
        ]
        lines += [check_row(c) for c in self.checks]
        if self.audit is not None:
            lines += ["", *_audit_markdown(self.audit)]
        lines += [
            "",
            "## What this proves, and what it does not",
            "",
            "These checks show that *this exact training algorithm ran on this exact data*: the live model "
            "is, bit for bit, what training from scratch on the remaining data produces, the stored data "
            "and the registry keep nothing of the person, and the receipts were not altered. They cannot "
            "show from the weights alone that a person's influence is gone (Thudi et al., USENIX Security "
            "2022: different data can yield the same weights); the evidence is the re-derivation and the "
            "records. The membership audit measures what an attacker could still infer; it is a test, not "
            "a proof. See docs/verification.md.",
        ]
        if self.mlflow_runs:
            lines += ["", f"Logged to MLflow run(s): {', '.join(f'`{r}`' for r in self.mlflow_runs)}."]
        return "\n".join(lines) + "\n"


def check_row(check: CheckResult) -> str:
    """The check as one row of a report's Markdown table: title, result, what was found."""
    return f"| {_title(check)} | {_MARK[check.status]} | {check.summary} |"


def _title(check: CheckResult) -> str:
    """The check's title; the post-hoc check on held-out rows is never titled a membership audit."""
    if check.name == "membership_audit" and check.details.get("kind") == "post_hoc_holdout":
        return "Post-hoc check (not a membership audit)"
    return _TITLES[check.name]


def _audit_markdown(record: AuditRecord) -> list[str]:
    def row(label: str, audit: ModelAudit) -> str:
        return (
            f"| {label} | {audit.loss.auc:.3f} | {audit.loss.tpr_at_fpr:.3f} | "
            f"{audit.calibrated.auc:.3f} | {audit.calibrated.tpr_at_fpr:.3f} |"
        )

    fpr = f"{record.fpr:.0%}"
    lines = [
        "## Membership-inference audit",
        "",
        f"Could an attacker tell that the {record.member_rows} erased row(s) were used for training, "
        f"compared with {record.nonmember_rows} held-out row(s) nobody trained on? AUC 0.5 means no better "
        f"than a coin toss, 1.0 always right; TPR at {fpr} FPR is the share of erased rows the attacker "
        f"flags while wrongly flagging only {fpr} of the held-out rows. The calibrated attack compares each "
        "row with the model retrained from scratch (a LiRA-style likelihood ratio, Carlini et al., IEEE S&P "
        "2022). The figures of the model before the erasure were measured during the erasure, just before "
        "that model was deleted; only these statistics were kept.",
        "",
        f"| Model | loss attack AUC | TPR at {fpr} FPR | calibrated AUC | TPR at {fpr} FPR |",
        "| --- | --- | --- | --- | --- |",
        row("before the erasure", record.before),
        row("after the erasure", record.after),
        row("retrained from scratch", record.from_scratch),
        "",
        "After and from scratch agree score for score."
        if record.after_equals_from_scratch
        else "**After and from scratch disagree**: the erasure was not exact.",
    ]
    if record.after.loss.auc < 0.5:
        lines += [
            "",
            "An AUC below 0.5 after the erasure means the erased rows now fit the model *worse* than the held-out "
            'rows do: the attacker would guess "not trained on" for them more often than for rows nobody trained '
            "on. It is not a leak: the model treats the erased person as a stranger, while the held-out rows may "
            "still resemble what it learnt (e.g. when they belong to people it knows).",
        ]
    return lines


def chain_markdown(report: ChainReport) -> str:
    """The log walk for a non-engineer."""
    lines = [
        f"# Receipt log of `{report.storage}`: {'INTACT' if report.intact else 'BROKEN'}",
        "",
        f"Checked {report.checked_at}: {report.receipts} receipt(s), each holding the hash of the one before.",
        f"Newest receipt's hash: `{report.head_sha256 or 'none'}` (note it elsewhere: a later walk that finds "
        "fewer receipts, or another hash here, shows the log was cut short).",
    ]
    if report.witnesses:
        lines.append(f"Cross-checked with: {', '.join(report.witnesses)}.")
    first = report.first_broken
    if first is not None:
        where = f"receipt #{first.sequence}" if first.sequence is not None else "outside the chain"
        lines += ["", f"**First broken link: {where}** (`{first.key}`): {first.problem}."]
    if report.broken:
        lines += ["", "| link | object | problem |", "| --- | --- | --- |"]
        lines += [
            f"| {b.sequence if b.sequence is not None else '-'} | `{b.key}` | {b.problem} |" for b in report.broken
        ]
    if report.warnings:
        lines += ["", "Notes (not breaks):", *[f"- `{w.key}`: {w.problem}" for w in report.warnings]]
    return "\n".join(lines) + "\n"
