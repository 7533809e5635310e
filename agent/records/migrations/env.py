"""Alembic's entry point, driven in-process: ``agent.records.store`` hands it a
connection (in ``config.attributes``); there is no alembic.ini."""

from __future__ import annotations

from alembic import context

from agent.records.store import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
