"""The texts of ``/forget-me``."""

from __future__ import annotations


def forget_text(report) -> str:
    """``/forget-me``: what was deleted."""
    rows = sum(report.rows.values())
    text = f"Done: deleted {rows} record(s) and {len(report.files_deleted)} file(s)."
    if not report.complete:
        text += " Some plugins could not delete their data; the operator has been told in the log."
    return text
