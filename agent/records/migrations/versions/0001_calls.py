"""Call records: ``calls`` and their timeline ``call_entries``.

Revision ID: 0001_calls
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_calls"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("end_reason", sa.String(64)),
        sa.Column("voice", sa.String(128)),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("server", sa.String(255), nullable=False),
        sa.Column("entries_dropped", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("calls_started_at", "calls", ["started_at"])
    op.create_index("calls_transport_started_at", "calls", ["transport", "started_at"])
    op.create_index("calls_end_reason_started_at", "calls", ["end_reason", "started_at"])
    op.create_table(
        "call_entries",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_text", sa.Text(), nullable=False),
        sa.Column("inputs", _json(), nullable=False),
        sa.Column("response_id", sa.String(64)),
        sa.Column("status", sa.String(64)),
        sa.Column("reason", sa.String(64)),
        sa.Column("reply_text", sa.Text(), nullable=False),
        sa.Column("heard_text", sa.Text(), nullable=False),
        sa.Column("audio_ms", sa.Float(), nullable=False),
        sa.Column("played_ms", sa.Float(), nullable=False),
        sa.Column("pauses", sa.Integer(), nullable=False),
        sa.Column("resumes", sa.Integer(), nullable=False),
        sa.Column("timings", _json(), nullable=False),
        sa.Column("tool_calls", _json(), nullable=False),
        sa.Column("errors", _json(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("call_entries")
    op.drop_index("calls_end_reason_started_at", "calls")
    op.drop_index("calls_transport_started_at", "calls")
    op.drop_index("calls_started_at", "calls")
    op.drop_table("calls")
