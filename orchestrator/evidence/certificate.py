"""The erasure certificate: one verify report as a self-contained HTML page a privacy team can file and print.

Pure: ``render_certificate(report, facts)`` turns a ``VerifyReport`` and the request's
``CertificateFacts`` (timeline, chain anchor) into HTML text; every value is escaped with
``html.escape``. No external CSS, script or font; inline styles only; ``@media print`` rules
give a light page with each part starting on a new page. Subjects appear as keyed digests,
never as raw ids. What each check proves and cannot prove is taken from docs/verification.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from pydantic import BaseModel, ConfigDict

from expunge.orchestrator.evidence.membership import ModelAudit
from expunge.orchestrator.evidence.report import CheckResult, VerifyReport

__all__ = ["CHECK_CLAIMS", "AnchorRun", "CertificateFacts", "render_certificate"]


class AnchorRun(BaseModel):
    """One MLflow run of the request and the receipt hash its ``expunge.chain.receipt_sha256`` tag holds (None: untagged)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_id: str
    receipt_sha256: str | None = None


class CertificateFacts(BaseModel):
    """What the certificate shows beyond the verify report; every time is UTC ISO 8601, None when not recorded.

    ``received_at`` and ``due_at`` come from the service's journal (None for a request erased with
    ``expunge forget``, which is not journalled); ``committed_at`` and ``registered_at`` from the
    receipt (or the journal); ``chain_sequence`` and ``receipt_sha256`` place the request's receipt
    in the store's receipt log; ``anchor_runs`` are the request's MLflow runs with the receipt
    hash each carries; ``ticket`` and ``reason`` were screened before they were stored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    ticket: str | None = None
    reason: str | None = None
    journalled: bool = False
    received_at: str | None = None
    due_at: str | None = None
    committed_at: str | None = None
    registered_at: str | None = None
    chain_sequence: int | None = None
    receipt_sha256: str | None = None
    previous_receipt_sha256: str | None = None
    anchor_runs: tuple[AnchorRun, ...] = ()


#: Per check: (title, what it proves, what it cannot prove), from docs/verification.md.
CHECK_CLAIMS: dict[str, tuple[str, str, str]] = {
    "exactness": (
        "Exactness: the live model is what training without the person gives",
        "The constituents the store serves are exactly SISA training from scratch on the remaining data, under "
        "Expunge's definition of exactness (persisted placement); so the erasure left no residue of the person in "
        "them, and every later erasure that restarts from these checkpoints starts from clean state.",
        "That the remaining data is the original data minus the person: re-derivation is on what the store holds "
        "now (the receipts and row counts are the record of what was removed). Shards the request did not touch "
        "are not re-derived. Bit equality needs the same torch build and CPU kind as training.",
    ),
    "state": (
        "Stored state: the files are the ones the commit wrote",
        "A file moved, copied or swapped between shards or steps after the commit, or edited, is reported with its "
        "shard and step, even when its manifest was rewritten with matching hashes, because the receipt (chained, "
        "and anchored outside the store) still holds what the commit wrote. It covers the untouched shards too.",
        "A version made by `train` or `ingest` after the newest erasure has no receipt yet, so the check is skipped until the "
        "next erasure. It says the files are the commit's, not that the commit was right: that is exactness.",
    ),
    "storage": (
        "Storage: nothing of the person in any object version",
        "This store keeps no byte of the person's rows and no model state trained on them, in any version.",
        "Anything about copies outside the store: the source data file, backups, replicas, caches, exports, logs "
        "of other systems. Without the raw id (--subject) raw ids in free text are not looked for.",
    ),
    "registry": (
        "Registry: no loadable model version holds the person",
        "Nobody can load a pre-erasure model from this registry, and its files are physically gone from the "
        "artifact store.",
        "Copies made before the erasure: a serving container that loaded the old version, a downloaded model, a "
        "database backup of MLflow.",
    ),
    "membership_audit": (
        "Membership-inference audit: could an attacker tell?",
        "How much an attacker of this kind could infer before and after the erasure; and that the served model "
        "and a from-scratch one treat the person's rows identically. Evidence about the implementation: the "
        "algorithm that ran behaves as retraining does.",
        "That no stronger attack exists: a low AUC is absence of evidence. Only the algorithm that ran can be "
        "audited, and an exact method is indistinguishable from retraining by construction (Thudi et al., USENIX "
        "Security 2022), so a passing audit adds nothing about the definition of unlearning itself.",
    ),
    "receipt_log": (
        "Receipt log: the records were not quietly changed",
        "No receipt was deleted, edited or reordered since it was written, as far as the anchors outside the store "
        "(MLflow runs, an Object Lock bucket where configured) reach.",
        "Someone able to rewrite every later receipt, its copies and the MLflow runs would not be caught when no "
        "Object Lock anchor is configured. The newest receipts written after the last anchor can still be deleted "
        "unnoticed: the head hash below, written down elsewhere, raises that bar.",
    ),
}
_POST_HOC_CLAIMS = (
    "Post-hoc check (not a membership audit)",
    "That the live model and a from-scratch re-derivation predict held-out rows identically: the exactness "
    "check restated on predictions.",
    "Anything about what an attacker could infer about the erased person: no audit ran at erasure time and the "
    "person's rows are gone, so no attack was scored.",
)
_MARK = {"passed": "PASSED", "failed": "FAILED", "skipped": "SKIPPED"}
_STYLE = """
body{font:15px/1.5 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#111;background:#fff;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px 32px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:28px 0 8px;border-bottom:2px solid #333}
h3{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px} th,td{border:1px solid #999;padding:5px 8px;
text-align:left;vertical-align:top} th{background:#eee} tr{break-inside:avoid}
code,.hash{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:13px;word-break:break-all}
.status{display:inline-block;padding:2px 10px;border:2px solid;border-radius:4px;font-weight:bold}
.passed{color:#0a6b1f;border-color:#0a6b1f} .failed{color:#b00020;border-color:#b00020}
.skipped{color:#555;border-color:#777} .note{color:#333;font-size:13px}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px;margin:8px 0} dt{font-weight:bold}
dd{margin:0}
@media print{body{font-size:11pt} main{max-width:none;padding:0} section.page{break-before:page}
h2,h3{break-after:avoid} th{background:#eee;print-color-adjust:exact;-webkit-print-color-adjust:exact}
@page{margin:16mm}}
"""


class _Html(str):
    """Markup already escaped (so ``_dl`` and ``_table`` put it in as is)."""


_TICKS = re.compile(r"`([^`<>]+)`")


def _e(value: object) -> str:
    return escape("" if value is None else str(value))


def _text(value: object) -> _Html:
    """Escaped prose, with the Markdown `code` spans the check summaries use set as code."""
    return _Html(_TICKS.sub(r"<code>\1</code>", _e(value)))


def _status(status: str) -> str:
    return f'<span class="status {_e(status)}">{_e(_MARK.get(status, status))}</span>'


def _dl(pairs: Iterable[tuple[str, object]]) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{v if isinstance(v, _Html) else _e(v)}</dd>" for k, v in pairs)
    return f"<dl>{rows}</dl>"


def _code(value: object) -> _Html:
    return _Html(f'<span class="hash">{_e(value)}</span>' if value not in (None, "") else "not recorded")


def _table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, _Html) else _e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _is_post_hoc(check: CheckResult) -> bool:
    return check.name == "membership_audit" and check.details.get("kind") == "post_hoc_holdout"


def _claims(check: CheckResult) -> tuple[str, str, str]:
    if _is_post_hoc(check):
        return _POST_HOC_CLAIMS
    see = "See docs/verification.md."
    return CHECK_CLAIMS.get(check.name, (check.name.replace("_", " ").capitalize(), see, see))


def _request(report: VerifyReport, facts: CertificateFacts) -> str:
    outcome = (
        f"{report.rows_removed} row(s) erased; shard(s) {', '.join(map(str, report.affected_shards))} retrained"
        if report.receipt_status == "erased"
        else "no data of the named person(s) was found; nothing was erased"
    )
    pairs: list[tuple[str, object]] = [("Request", _code(report.request_id))]
    if report.batch_id:
        pairs.append(("Coalesced into", _code(report.batch_id)))
    pairs += [
        ("Ticket", facts.ticket or "none given"),
        ("Reason", facts.reason or "none given"),
        ("Persons named", f"{len(report.subject_digests)} (keyed HMAC-SHA256 digests below; no raw id is shown)"),
        ("Outcome", outcome),
        ("Store", _code(report.storage)),
        ("Published model version", f"v{report.ensemble_version}"),
    ]
    digests = _table(["#", "subject digest"], ((n, _code(d)) for n, d in enumerate(report.subject_digests, 1)))
    return f"<h2>The request</h2>{_dl(pairs)}{digests}"


def _timeline(report: VerifyReport, facts: CertificateFacts) -> str:
    cli = _text("not journalled (erased with `expunge forget`, not through the service)")
    rows = [
        ("Received", facts.received_at or cli),
        ("Due (GDPR Art. 12(3))", facts.due_at or (cli if not facts.journalled else "not recorded")),
        ("Committed (the person gone from every answer)", facts.committed_at or "not recorded"),
        ("Done (MLflow registered, earlier versions purged)", facts.registered_at or "not recorded"),
        ("Verified", report.checked_at),
    ]
    return "<h2>Timeline (UTC)</h2>" + _table(["Step", "When"], rows)


def _checks(report: VerifyReport) -> str:
    rows = []
    for check in report.checks:
        title, proves, cannot = _claims(check)
        rows.append(
            (
                _Html(f"<b>{_e(title)}</b><br><code>{_e(check.name)}</code>"),
                _Html(_status(check.status)),
                _text(check.summary),
                _text(proves),
                _text(cannot),
            )
        )
    head = ["Check", "Result", "What was found", "What it proves", "What it cannot prove"]
    return '<section class="page"><h2>The checks</h2>' + _table(head, rows) + "</section>"


def _exactness_table(check: CheckResult) -> str:
    shards = check.details.get("shards", [])
    rows = [
        (
            s["shard"],
            s["shard_version"],
            s["rows"],
            s["checkpoints_compared"],
            s["tensors_compared"],
            "yes" if s["exact"] else "NO",
            s.get("first_difference") or "none",
        )
        for s in shards
    ]
    head = ["Shard", "Version", "Rows", "Checkpoints", "Tensors", "Bit-identical", "First difference"]
    return "<h3>Exactness: shards re-derived</h3>" + (_table(head, rows) if rows else "<p>None (skipped).</p>")


def _storage_table(check: CheckResult) -> str:
    details = check.details
    coverage: dict[str, Any] = details.get("coverage", {})
    parts = [
        "<h3>Storage: what the scan read</h3>",
        _table(
            ["Place", "Count"],
            [(k.replace("_", " "), ("yes" if v else "no") if isinstance(v, bool) else v) for k, v in coverage.items()],
        ),
    ]
    findings = details.get("findings", [])
    parts.append(
        _table(
            ["Kind", "Object", "Where inside", "Rule", "Subject digest"],
            [
                (f["kind"], _code(f["key"]), f.get("location") or "-", f["rule"], _code(f["subject_digest"][:16] + "…"))
                for f in findings
            ],
        )
        if findings
        else f"<p>No trace of the person found in {_e(details.get('objects_scanned', 0))} object(s).</p>"
    )
    missing = details.get("untombstoned_digests", [])
    parts.append(f"<p>Erased digests missing from the tombstone list: {len(missing)}.</p>")
    return "".join(parts)


def _registry_table(check: CheckResult) -> str:
    d = check.details
    if not d:
        return f"<h3>Registry</h3><p>{_text(check.summary)}</p>"
    pairs = [
        ("Model", d.get("model_name")),
        ("Alias", d.get("alias")),
        ("Served version", d.get("served_version")),
        ("Tracking URI", _code(d.get("tracking_uri"))),
    ]
    versions = [
        (
            v["version"],
            v["ensemble_version"],
            v.get("purged_by_request") or "-",
            ", ".join(v["aliases"]) or "none",
            "yes" if v["logged_model_record"] else "no",
            v["remaining_objects"],
            "YES" if v["loadable"] else "no",
        )
        for v in d.get("versions", [])
    ]
    head = ["Version", "Ensemble", "Purged by", "Aliases", "LoggedModel", "Files left", "Loadable"]
    return "<h3>Registry: model versions that held the person</h3>" + _dl(pairs) + _table(head, versions)


def _audit_table(report: VerifyReport, check: CheckResult) -> str:
    record = report.audit
    if _is_post_hoc(check):
        d = check.details
        pairs = [
            ("Held-out rows scored", d.get("holdout_rows")),
            ("Rows predicted differently", d.get("rows_predicted_differently")),
            ("Largest difference", d.get("max_abs_difference")),
            ("Shards re-derived", ", ".join(map(str, d.get("rederived_shards", [])))),
        ]
        return "<h3>Post-hoc check on held-out rows (not a membership audit)</h3>" + _dl(pairs)
    if record is None:
        return f"<h3>Membership-inference audit</h3><p>{_text(check.summary)}</p>"
    fpr = f"{record.fpr:.0%}"

    def row(label: str, audit: ModelAudit) -> tuple[object, ...]:
        return (
            label,
            f"{audit.loss.auc:.3f}",
            f"{audit.loss.tpr_at_fpr:.3f}",
            f"{audit.calibrated.auc:.3f}",
            f"{audit.calibrated.tpr_at_fpr:.3f}",
        )

    head = ["Model", "Loss attack AUC", f"TPR at {fpr} FPR", "Calibrated AUC", f"TPR at {fpr} FPR"]
    rows = [
        row("before the erasure", record.before),
        row("after the erasure", record.after),
        row("retrained from scratch", record.from_scratch),
    ]
    note = (
        f"{record.member_rows} erased row(s) against {record.nonmember_rows} held-out row(s); AUC 0.5 is a coin "
        "toss. The figures before the erasure were measured during it, just before that model was deleted. "
        + (
            "After and from scratch agree score for score."
            if record.after_equals_from_scratch
            else "AFTER AND FROM SCRATCH DISAGREE: the erasure was not exact."
        )
    )
    return "<h3>Membership-inference audit</h3>" + _table(head, rows) + f'<p class="note">{_e(note)}</p>'


def _anchor(report: VerifyReport, facts: CertificateFacts) -> str:
    chain = report.check("receipt_log").details
    pairs = [
        ("Receipt's place in the log", facts.chain_sequence if facts.chain_sequence is not None else "not chained"),
        ("Receipt sha256", _code(facts.receipt_sha256)),
        (
            "Previous receipt sha256",
            _Html("none (the first receipt)") if facts.chain_sequence == 1 else _code(facts.previous_receipt_sha256),
        ),
        ("Receipts in the log", chain.get("receipts", "not recorded")),
        ("Head of the log (newest receipt's sha256)", _code(chain.get("head_sha256"))),
        ("Cross-checked with", ", ".join(chain.get("witnesses", ())) or "nothing outside the store"),
        ("Report attached to MLflow runs", _Html(", ".join(_code(r) for r in report.mlflow_runs) or "none")),
    ]
    runs = [
        (
            _code(run.run_id),
            _code(run.receipt_sha256),
            "no anchor tag"
            if run.receipt_sha256 is None
            else ("matches" if run.receipt_sha256 == facts.receipt_sha256 else "DIFFERS from the receipt"),
        )
        for run in facts.anchor_runs
    ]
    anchored = (
        "<h3>MLflow runs anchoring the receipt</h3>"
        + _table(["Run", "Receipt sha256 in its tag", "Against the receipt"], runs)
        if runs
        else "<p>No MLflow run of the request was read (no registry, or none recorded).</p>"
    )
    return (
        '<section class="page"><h2>Chain anchor</h2>'
        + _dl(pairs)
        + anchored
        + '<p class="note">Write the head hash down outside the store (this certificate does): a later walk of the '
        "log that ends at another hash, or finds fewer receipts, shows the log was changed or cut short.</p>"
        + "</section>"
    )


def render_certificate(report: VerifyReport, facts: CertificateFacts) -> str:
    """The certificate of one verified request as a complete HTML document (UTF-8 text, no external resources).

    Sections: the request (digests only), its timeline, the checks with what each proves and
    cannot prove, the exactness, storage, registry and audit tables, and the chain anchor.
    """
    verdict = "PASSED" if report.passed else "FAILED"
    by_name = {c.name: c for c in report.checks}
    tables = [
        _exactness_table(by_name["exactness"]) if "exactness" in by_name else "",
        _storage_table(by_name["storage"]) if "storage" in by_name else "",
        _registry_table(by_name["registry"]) if "registry" in by_name else "",
        _audit_table(report, by_name["membership_audit"]) if "membership_audit" in by_name else "",
    ]
    body = "".join(
        [
            f"<h1>Erasure certificate: {_e(verdict)}</h1>",
            f"<p>{_status(report.status)} Request <code>{_e(report.request_id)}</code>, verified "
            f"{_e(report.checked_at)} by <code>expunge verify</code> from what the store and the registry hold now.</p>",
            _request(report, facts),
            _timeline(report, facts),
            _checks(report),
            '<section class="page"><h2>What was found, in detail</h2>' + "".join(tables) + "</section>",
            _anchor(report, facts),
            "<h2>What this proves, and what it does not</h2><p>These checks show that <em>this exact training "
            "algorithm ran on this exact data</em>: the live model is, bit for bit, what training from scratch on "
            "the remaining data produces; the stored data and the registry keep nothing of the person; the "
            "receipts were not altered. They cannot show from the weights alone that a person's influence is gone "
            "(Thudi et al., USENIX Security 2022: different data can yield the same weights); the evidence is the "
            "re-derivation and the records. See docs/verification.md.</p>",
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Erasure certificate {_e(report.request_id)}: {_e(verdict)}</title>"
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head>'
        f"<body><main>{body}</main></body></html>\n"
    )
