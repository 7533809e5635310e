"""Call records, sans-I/O: a call's events become timeline entries (``builder``) with
the caller's private data redacted (``redact``). ``agent.records`` stores them."""

from pipeline.records.builder import (
    CUT_BY_CALL_END,
    INCOMPLETE,
    CallRecorder,
    Entry,
    EntryKind,
    RecordLimits,
)
from pipeline.records.redact import REDACTABLE, Redaction

__all__ = [
    "CUT_BY_CALL_END",
    "INCOMPLETE",
    "REDACTABLE",
    "CallRecorder",
    "Entry",
    "EntryKind",
    "RecordLimits",
    "Redaction",
]
