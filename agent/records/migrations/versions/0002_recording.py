"""Calls say whether, and how, their audio was recorded.

Revision ID: 0002_recording
Revises: 0001_calls
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_recording"
down_revision: str | None = "0001_calls"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "calls",
        sa.Column("recording", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
    )


def downgrade() -> None:
    op.drop_column("calls", "recording")
