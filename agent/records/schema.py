"""The record tables, as SQLAlchemy Core sees them (the migrations create them).

``calls``: one row per call. ``call_entries``: its timeline, one row per turn,
ignored input or error, keyed by (call, sequence number) so that writing a row
twice (a retry after a lost acknowledgement) keeps one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """``timestamptz`` on PostgreSQL; SQLite keeps no zone, so UTC is stored and read back."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("transport", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime()),
    sa.Column("end_reason", sa.String(64)),
    sa.Column("voice", sa.String(128)),
    sa.Column("settings", JSONDocument, nullable=False),
    sa.Column("server", sa.String(255), nullable=False),
    sa.Column("entries_dropped", sa.Integer(), nullable=False),
    sa.Column("recording", JSONDocument),
)

call_entries = sa.Table(
    "call_entries",
    metadata,
    sa.Column("call_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=False),
    sa.Column("user_text", sa.Text(), nullable=False),
    sa.Column("inputs", JSONDocument, nullable=False),
    sa.Column("response_id", sa.String(64)),
    sa.Column("status", sa.String(64)),
    sa.Column("reason", sa.String(64)),
    sa.Column("reply_text", sa.Text(), nullable=False),
    sa.Column("heard_text", sa.Text(), nullable=False),
    sa.Column("audio_ms", sa.Float(), nullable=False),
    sa.Column("played_ms", sa.Float(), nullable=False),
    sa.Column("pauses", sa.Integer(), nullable=False),
    sa.Column("resumes", sa.Integer(), nullable=False),
    sa.Column("timings", JSONDocument, nullable=False),
    sa.Column("tool_calls", JSONDocument, nullable=False),
    sa.Column("errors", JSONDocument, nullable=False),
)

# A suspended call's ``pipeline.resume.ResumeSnapshot`` (unredacted: emptied once
# claimed, deleted once expired). ``state``: ``suspended`` (resumable until
# ``expires_at``) or ``resumed`` (claimed by one server).
resume_snapshots = sa.Table(
    "resume_snapshots",
    metadata,
    sa.Column("call_id", sa.String(64), primary_key=True),
    sa.Column("epoch", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("snapshot", JSONDocument),
    sa.Column("server", sa.String(255), nullable=False),
)
