"""Call records in a database: ``store`` (SQLAlchemy async Core, alembic migrations)
and ``writer`` (the bounded buffer and the task that empties it). The records
themselves are built sans-I/O in ``pipeline.records``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from agent.records.store import CallFilter, RecordStore, database_url
from agent.records.webhook import CallWebhook
from agent.records.writer import CallRecords, RecordingPolicy
from pipeline.records import RecordLimits, Redaction

if TYPE_CHECKING:
    from agent.config import Settings

__all__ = [
    "RECORDS_FLUSH_TIMEOUT_S",
    "CallFilter",
    "CallRecords",
    "RecordStore",
    "RecordingPolicy",
    "database_url",
    "records_for",
    "start_records",
]


def records_for(
    url: str, registry: CollectorRegistry, *, redact: tuple[str, ...] = (),
    max_buffered_entries: int = 10_000, max_entries_per_call: int = 2_000,
    recordings: RecordingPolicy | None = None, webhook: tuple[str, str] | None = None,
) -> CallRecords:
    """The records of a server whose settings name ``url`` (not yet started);
    ``webhook``: (URL, secret) of the call webhook."""
    store = RecordStore(database_url(url))
    return CallRecords(
        store, registry,
        webhook=None if webhook is None else CallWebhook(*webhook, store, registry),
        redaction=Redaction.named(redact),
        limits=RecordLimits(max_entries=max_entries_per_call),
        max_buffered_entries=max_buffered_entries, recordings=recordings,
    )


RECORDS_FLUSH_TIMEOUT_S = 5.0
"""At shutdown, how long records still buffered get to reach the database."""


def start_records(settings: Settings, registry: CollectorRegistry) -> CallRecords | None:
    """The records of a server with these settings, writer started; None without a
    database. Call on the server's loop."""
    if settings.database_url is None:
        return None
    records = records_for(
        settings.database_url, registry, redact=settings.record_redact,
        max_buffered_entries=settings.record_buffer_entries,
        recordings=None if settings.recordings == "off" else RecordingPolicy(
            settings.recordings_path(), settings.recording_retention_days * 86_400.0),
        webhook=None if settings.call_webhook_url is None or settings.call_webhook_secret is None
        else (settings.call_webhook_url, settings.call_webhook_secret),
    )
    records.start()
    return records
