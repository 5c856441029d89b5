"""The outcome of one verify check, built the same way by every check module."""

from __future__ import annotations

from typing import Any

from expunge.orchestrator.evidence.report import CheckName, CheckResult


def result(name: CheckName, problems: list[str], summary: str, details: dict[str, Any]) -> CheckResult:
    """``failed`` with the problems joined when there are any, else ``passed`` with ``summary``."""
    if problems:
        return CheckResult(name=name, status="failed", summary="; ".join(problems), details=details)
    return CheckResult(name=name, status="passed", summary=summary, details=details)


__all__ = ["result"]
