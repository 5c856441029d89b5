"""The erasure certificate: every check visible, no raw id, valid self-contained HTML, escaped values.

One erasure per module (in-process shards, sqlite MLflow), audited because the store's evidence
config names held-out rows (``evidence.audit_holdout``), not because the caller passed an audit.
The slow test opens the page in headless Chromium and prints it to PDF.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from expunge.orchestrator.catalog import Catalog
from expunge.orchestrator.config import EvidenceConfig, SyntheticRatingsConfig, TrackingConfig
from expunge.orchestrator.coordinator import Coordinator, local_pool
from expunge.orchestrator.digests import SubjectHasher
from expunge.orchestrator.evidence.audit_check import holdout_check
from expunge.orchestrator.evidence.certificate import CHECK_CLAIMS, CertificateFacts, render_certificate
from expunge.orchestrator.evidence.certificate_facts import certificate_facts
from expunge.orchestrator.evidence.holdout import holdout_rows
from expunge.orchestrator.evidence.membership import read_audit
from expunge.orchestrator.evidence.report import VerifyReport
from expunge.orchestrator.evidence.verify import verify_erasure
from expunge.orchestrator.receipts import ErasureReceipt
from expunge.orchestrator.registry import Lineage
from expunge.pipelines.datasets import split_rows, synthetic_ratings
from expunge.shards.rows import SUBJECT_ID
from expunge.shards.store import ObjectStore
from expunge.shards.training import decode_checkpoint, encode_checkpoint
from tests.conftest import TEST_KEY
from tests.engine import job

REQUEST = "GDPR-2026-0042"
#: Every subject id starts so: a letter no hex digest holds, so any raw id on the page is caught.
PREFIX = "zq-"
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Erasure:
    store: Path
    holdout: Path
    subject: str
    receipt: ErasureReceipt
    report: VerifyReport
    facts: CertificateFacts


def _rows() -> tuple[pa.Table, pa.Table]:
    rows = synthetic_ratings(SyntheticRatingsConfig(users=40, items=30, ratings_per_user=8, seed=1))
    renamed = pc.replace_substring(rows.column(SUBJECT_ID), "user-", PREFIX)
    return split_rows(rows.set_column(rows.column_names.index(SUBJECT_ID), SUBJECT_ID, renamed), 0.2, 0)


@pytest.fixture(scope="module")
def erasure(tmp_path_factory: pytest.TempPathFactory) -> Erasure:
    root = tmp_path_factory.mktemp("certificate")
    rows, held_out = _rows()
    pq.write_table(held_out, root / "holdout.parquet")
    tracking = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="certificate", model_name="cert")
    evidence = EvidenceConfig(audit_holdout=str(root / "holdout.parquet"))
    coordinator = Coordinator(
        str(root / "store"),
        SubjectHasher(TEST_KEY),
        Lineage(tracking, str(root / "store")),
        pool_factory=local_pool,
        evidence=evidence,
    )
    coordinator.train(rows, job(shards=2, slices=2))
    subject = sorted(set(rows.column(SUBJECT_ID).to_pylist()))[5]
    receipt = coordinator.forget([subject], request_id=REQUEST, ticket="DESK-0042", reason="Art. 17 <request> & co")
    coordinator.close()
    report = verify_erasure(str(root / "store"), REQUEST, SubjectHasher(TEST_KEY), subject)
    facts = certificate_facts(ObjectStore(str(root / "store")), report)
    return Erasure(root / "store", root / "holdout.parquet", subject, receipt, report, facts)


class _Structure(HTMLParser):
    """Every element closed in order (void elements aside), and the text and tags seen."""

    VOID = frozenset({"meta", "br", "link", "img", "hr", "input"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problems: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Structure:
    parser = _Structure()
    parser.feed(page)
    parser.close()
    return parser


# ----- the audit runs for every erasure where it is configured --------------------------------------------
def test_an_erasure_on_a_store_with_a_holdout_configured_is_audited_without_being_asked(erasure):
    assert erasure.receipt.audit_sha256 is not None
    stored = read_audit(ObjectStore(str(erasure.store)), REQUEST)
    assert stored is not None
    assert stored[1] == erasure.receipt.audit_sha256
    record, _ = stored
    assert record.nonmember_rows == len(holdout_rows(str(erasure.holdout)))
    assert record.after_equals_from_scratch
    row = erasure.report.check("membership_audit")
    assert row.status == "passed"
    assert row.details["kind"] == "audit"


# ----- the page --------------------------------------------------------------------------------------------
def test_the_page_shows_every_check_with_its_result_and_what_it_proves(erasure):
    page = render_certificate(erasure.report, erasure.facts)
    text = "".join(_parse(page).text)
    assert "Erasure certificate: PASSED" in text
    for check in erasure.report.checks:
        title, proves, cannot = (claim.replace("`", "") for claim in CHECK_CLAIMS[check.name])
        assert title in text
        assert proves in text
        assert cannot in text
        assert check.name in text
    statuses = [c.status for c in erasure.report.checks]
    assert text.count("PASSED") >= len(statuses) + 1  # the verdict and one per check
    for label in ("Received", "Due (GDPR Art. 12(3))", "Committed", "Done", "Verified", "Chain anchor"):
        assert label in text
    assert erasure.receipt.committed_at is not None
    assert erasure.receipt.committed_at in text
    assert "DESK-0042" in text


def test_the_chain_anchor_names_the_receipt_and_the_log_head(erasure):
    facts = erasure.facts
    assert facts.chain_sequence == erasure.receipt.chain_sequence
    assert facts.receipt_sha256 is not None
    head = erasure.report.check("receipt_log").details["head_sha256"]
    assert head == facts.receipt_sha256  # the only receipt is the head
    page = render_certificate(erasure.report, facts)
    assert facts.receipt_sha256 in page
    for run_id in erasure.report.mlflow_runs:
        assert run_id in page


def test_the_page_holds_digests_and_never_a_raw_subject_id(erasure):
    page = render_certificate(erasure.report, erasure.facts)
    assert erasure.report.raw_id_checked  # the raw id was given to verify, and still is not shown
    assert PREFIX not in page
    for digest in erasure.report.subject_digests:
        assert digest in page


def test_the_page_is_well_formed_and_self_contained(erasure):
    page = render_certificate(erasure.report, erasure.facts)
    parsed = _parse(page)
    assert parsed.problems == []
    assert parsed.open == []
    tags = [t for t, _ in parsed.tags]
    assert tags[:2] == ["html", "head"]
    assert "script" not in tags
    assert "link" not in tags
    assert "img" not in tags
    assert not [a for _, attrs in parsed.tags for k, a in attrs.items() if k in ("src", "href")]
    assert "@media print" in page
    assert "break-before:page" in page


def test_every_value_is_escaped(erasure):
    hostile = "<script>alert(1)</script> & <b>"
    checks = tuple(c.model_copy(update={"summary": hostile}) for c in erasure.report.checks)
    report = erasure.report.model_copy(update={"checks": checks, "request_id": "<i>r</i>"})
    facts = erasure.facts.model_copy(update={"ticket": hostile})
    page = render_certificate(report, facts)
    assert "<script>" not in page
    assert "<i>r</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in page
    assert _parse(page).problems == []
    assert "Art. 17 &lt;request&gt; &amp; co" in render_certificate(erasure.report, erasure.facts)


def test_a_failed_check_shows_as_failed(erasure):
    checks = tuple(
        c.model_copy(update={"status": "failed", "summary": "one row left"}) if c.name == "storage" else c
        for c in erasure.report.checks
    )
    page = render_certificate(erasure.report.model_copy(update={"checks": checks, "status": "failed"}), erasure.facts)
    text = "".join(_parse(page).text)
    assert "Erasure certificate: FAILED" in text
    assert "one row left" in text
    assert 'class="status failed"' in page


# ----- the post-hoc check on held-out rows -------------------------------------------------------------------
def test_the_post_hoc_check_passes_on_an_exact_erasure_and_says_it_is_no_audit(erasure):
    catalog = Catalog(ObjectStore(str(erasure.store)))
    manifest = catalog.latest()
    assert manifest is not None
    rows = holdout_rows(str(erasure.holdout))
    found = holdout_check(catalog, manifest, erasure.receipt.affected_shards, rows, SubjectHasher(TEST_KEY))
    assert found.status == "passed"
    assert found.summary.startswith("Post-hoc check, not a membership audit")
    assert found.details["kind"] == "post_hoc_holdout"
    assert found.details["rows_predicted_differently"] == 0
    checks = tuple(found if c.name == "membership_audit" else c for c in erasure.report.checks)
    report = erasure.report.model_copy(update={"checks": checks, "audit": None})
    page = render_certificate(report, erasure.facts)
    assert "Post-hoc check (not a membership audit)" in "".join(_parse(page).text)
    # The Markdown report (printed, and attached to MLflow) never titles it a membership audit either.
    markdown = report.to_markdown()
    assert "| Post-hoc check (not a membership audit) | ✅ passed |" in markdown
    assert "| Membership audit |" not in markdown


def test_the_post_hoc_check_fails_when_the_live_model_is_not_the_re_derived_one(erasure, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(erasure.store, store)
    catalog = Catalog(ObjectStore(str(store)))
    manifest = catalog.latest()
    assert manifest is not None
    (shard,) = erasure.receipt.affected_shards
    key = catalog.shard_manifest(shard, manifest.shard_versions[shard]).checkpoints[-1].key
    payload = decode_checkpoint((store / key).read_bytes())
    payload["model"]["item_bias"][:] += 0.5
    (store / key).write_bytes(encode_checkpoint(payload))
    rows = holdout_rows(str(erasure.holdout))
    found = holdout_check(catalog, manifest, erasure.receipt.affected_shards, rows, SubjectHasher(TEST_KEY))
    assert found.status == "failed"
    assert "predicted differently" in found.summary
    assert found.details["rows_predicted_differently"] > 0


# ----- in a real browser -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")
def test_chromium_renders_the_page_and_prints_it_to_pdf(erasure, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_certificate(erasure.report, erasure.facts), encoding="utf-8")
    shot, pdf = tmp_path / "report.png", tmp_path / "report.pdf"
    common = [
        str(CHROMIUM),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    for flags in (
        [f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars"],
        [f"--print-to-pdf={pdf}", "--no-pdf-header-footer"],
    ):
        subprocess.run([*common, *flags, page.as_uri()], check=True, capture_output=True, timeout=120)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20]), int.from_bytes(png[20:24])) == (1200, 2000)
    printed = pdf.read_bytes()
    assert printed[:5] == b"%PDF-"
    # The print rules start the checks, the details and the anchor on pages of their own.
    assert len(re.findall(rb"/Type\s*/Page[^s]", printed)) >= 4
