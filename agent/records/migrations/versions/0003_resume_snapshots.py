"""Suspended calls' resume snapshots: what another replica needs to resume a call.

Revision ID: 0003_resume_snapshots
Revises: 0002_recording
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_resume_snapshots"
down_revision: str | None = "0002_recording"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "resume_snapshots",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("snapshot", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
        sa.Column("server", sa.String(255), nullable=False),
    )
    op.create_index("resume_snapshots_expires_at", "resume_snapshots", ["expires_at"])


def downgrade() -> None:
    op.drop_index("resume_snapshots_expires_at", "resume_snapshots")
    op.drop_table("resume_snapshots")
