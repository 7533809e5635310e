"""Alembic migrations of the record tables (run by ``agent.records.store.migrate``)."""
