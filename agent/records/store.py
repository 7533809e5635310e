"""The record database: SQLite (a file, the embedded default) or PostgreSQL (shared by
replicas), through SQLAlchemy's async Core on aiosqlite or asyncpg, with alembic
migrations run in-process at start.

Only the writer task (``agent.records.writer``) and the calls API use it; nothing on
a call's audio path waits for it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, StaticPool

from agent.records.schema import call_entries, calls, resume_snapshots

VERSION_TABLE = "voiceforge_schema_version"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x766F6963  # any constant: replicas starting together migrate one by one
CONNECT_TIMEOUT_S = 5.0
STATEMENT_TIMEOUT_S = 15.0
MAX_PAGE = 500
MAX_SEARCH_CHARS = 200


def database_url(value: str) -> URL:
    """The async URL for ``value``: ``sqlite:///path`` or ``postgresql://...`` (the
    usual spellings) take aiosqlite or asyncpg. Raises ValueError for other stores."""
    try:
        url = make_url(value)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg")
    raise ValueError(f"call records go to sqlite or postgresql, not {backend!r}")


def redacted_url(url: URL) -> str:
    return url.render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class CallFilter:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    transport: str | None = None
    end_reason: str | None = None
    text: str | None = None
    """Words in what the caller said, the reply generated or the reply heard."""
    before: tuple[dt.datetime, str] | None = None
    """Keyset cursor: calls that started before this (time, id), newest first."""
    limit: int = 50


class RecordStore:
    def __init__(self, url: URL) -> None:
        self.url = url
        self.dialect = url.get_backend_name()
        if self.dialect == "sqlite":
            if url.database and url.database != ":memory:":
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # No pool: each aiosqlite connection is a thread and three open files, and
            # a pool would keep them after the calls that needed them (the soak's
            # "back to the idle baseline" check); opening a SQLite file is cheap, and
            # writes are off the audio path.
            self.engine: AsyncEngine = create_async_engine(
                url, connect_args={"timeout": CONNECT_TIMEOUT_S},
                # (An in-memory database lives as long as its one connection.)
                poolclass=StaticPool if url.database in (None, "", ":memory:") else NullPool,
            )
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(
                url,
                pool_pre_ping=True,  # a server restarted since: reconnect, not fail a write
                pool_size=4,
                max_overflow=4,
                pool_timeout=CONNECT_TIMEOUT_S,
                connect_args={"timeout": CONNECT_TIMEOUT_S,
                              "command_timeout": STATEMENT_TIMEOUT_S},
            )

    async def close(self) -> None:
        await self.engine.dispose()

    async def migrate(self) -> None:
        """Bring the tables to the newest schema (alembic); safe to run from several
        replicas at once on PostgreSQL (an advisory lock orders them)."""
        if self.dialect == "sqlite" and self.url.database not in (None, "", ":memory:"):
            # SQLite runs DDL outside the transaction: a lock file orders processes.
            lock = os.open(f"{self.url.database}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
                async with self.engine.begin() as conn:
                    await conn.run_sync(_upgrade)
            finally:
                os.close(lock)  # releases the lock
            return
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            await conn.run_sync(_upgrade)

    # ----------------------------------------------------------------- writes

    async def write(self, call_rows: Sequence[dict[str, Any]],
                    entry_rows: Sequence[dict[str, Any]]) -> None:
        """Upsert calls and add entries in one transaction; an entry written before
        (a retry) is kept as it was."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        async with self.engine.begin() as conn:
            if call_rows:
                upsert = insert(calls)
                upsert = upsert.on_conflict_do_update(
                    index_elements=[calls.c.id],
                    set_={name: upsert.excluded[name] for name in call_rows[0] if name != "id"},
                )
                await conn.execute(upsert, list(call_rows))
            if entry_rows:
                add = insert(call_entries).on_conflict_do_nothing(
                    index_elements=[call_entries.c.call_id, call_entries.c.seq]
                )
                await conn.execute(add, list(entry_rows))

    async def delete_call(self, call_id: str) -> bool:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.delete(resume_snapshots).where(resume_snapshots.c.call_id == call_id))
            await conn.execute(sa.delete(call_entries).where(call_entries.c.call_id == call_id))
            deleted = await conn.execute(sa.delete(calls).where(calls.c.id == call_id))
        return bool(deleted.rowcount)

    # ------------------------------------------------------------ resume snapshots

    async def save_snapshot(self, call_id: str, epoch: int, expires_at: dt.datetime,
                            snapshot: dict[str, Any], server: str) -> None:
        """Make a suspended call resumable (by any server) until ``expires_at``; expired
        snapshots go in the same step."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        row = {"call_id": call_id, "epoch": epoch, "state": "suspended",
               "expires_at": expires_at, "snapshot": snapshot, "server": server}
        upsert = insert(resume_snapshots).values(row)
        upsert = upsert.on_conflict_do_update(
            index_elements=[resume_snapshots.c.call_id],
            set_={name: upsert.excluded[name] for name in row if name != "call_id"},
            # An older suspension arriving late never overwrites a newer one.
            where=resume_snapshots.c.epoch <= upsert.excluded.epoch,
        )
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(resume_snapshots).where(
                resume_snapshots.c.expires_at < dt.datetime.now(dt.UTC)))
            await conn.execute(upsert)

    async def claim_snapshot(
        self, call_id: str, epoch: int, now: dt.datetime
    ) -> tuple[str, dict[str, Any] | None]:
        """Take a suspended call for resuming, once: ``("claimed", snapshot)``, or why
        not: ``missing`` (no suspension of this epoch yet), ``expired``, ``used``."""
        table = resume_snapshots
        async with self.engine.begin() as conn:
            # The conditional update decides the one winner, on either database.
            won = await conn.execute(
                sa.update(table)
                .where(table.c.call_id == call_id, table.c.epoch == epoch,
                       table.c.state == "suspended", table.c.expires_at > now)
                .values(state="resumed")
            )
            row = (await conn.execute(
                sa.select(table.c.epoch, table.c.state, table.c.expires_at, table.c.snapshot)
                .where(table.c.call_id == call_id)
            )).mappings().first()
            if won.rowcount == 1 and row is not None:
                await conn.execute(sa.update(table).where(table.c.call_id == call_id)
                                   .values(snapshot=None))  # unredacted: kept no longer
                return "claimed", _loaded(row["snapshot"])
        if row is None or row["epoch"] < epoch:
            return "missing", None
        if row["epoch"] == epoch and row["state"] == "suspended":
            return "expired", None
        return "used", None

    async def resumed_since(self, call_id: str, epoch: int) -> bool:
        """Whether the suspension of ``epoch`` was claimed (the call goes on elsewhere)."""
        table = resume_snapshots
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(table.c.epoch, table.c.state)
                                      .where(table.c.call_id == call_id))).first()
        return row is not None and (row.epoch > epoch or row.state == "resumed")

    # ------------------------------------------------------------------ reads

    async def list_calls(self, where: CallFilter) -> list[dict[str, Any]]:
        turns = (
            sa.select(sa.func.count())
            .where(call_entries.c.call_id == calls.c.id, call_entries.c.kind == "turn")
            .scalar_subquery()
        )
        query = sa.select(calls, turns.label("turns"))
        if where.since is not None:
            query = query.where(calls.c.started_at >= where.since)
        if where.until is not None:
            query = query.where(calls.c.started_at < where.until)
        if where.transport is not None:
            query = query.where(calls.c.transport == where.transport)
        if where.end_reason is not None:
            query = query.where(calls.c.end_reason == where.end_reason)
        if where.text:
            pattern = "%" + _escape_like(where.text) + "%"
            query = query.where(
                sa.exists().where(
                    call_entries.c.call_id == calls.c.id,
                    sa.or_(*(column.ilike(pattern, escape="\\") for column in (
                        call_entries.c.user_text, call_entries.c.reply_text,
                        call_entries.c.heard_text))),
                )
            )
        if where.before is not None:
            at, call_id = where.before
            query = query.where(sa.or_(
                calls.c.started_at < at,
                sa.and_(calls.c.started_at == at, calls.c.id < call_id),
            ))
        query = query.order_by(calls.c.started_at.desc(), calls.c.id.desc()).limit(where.limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_call_json(row) for row in rows]

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                sa.select(calls).where(calls.c.id == call_id)
            )).mappings().first()
            if row is None:
                return None
            entries = (await conn.execute(
                sa.select(call_entries)
                .where(call_entries.c.call_id == call_id)
                .order_by(call_entries.c.seq)
            )).mappings().all()
        return {**_call_json(row), "timeline": [_entry_json(entry) for entry in entries]}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: the API reads while the writer writes, and several processes may share
    # the file; busy_timeout waits for another writer instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(CONNECT_TIMEOUT_S * 1000)}")
    cursor.close()


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _loaded(value: Any) -> Any:
    """JSON columns come back parsed from asyncpg's JSONB, as text from some drivers."""
    return json.loads(value) if isinstance(value, str) else value


def _call_json(row: Any) -> dict[str, Any]:
    body = {
        "id": row["id"],
        "transport": row["transport"],
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "end_reason": row["end_reason"],
        "voice": row["voice"],
        "settings": _loaded(row["settings"]),
        "server": row["server"],
        "entries_dropped": row["entries_dropped"],
        "recording": _loaded(row["recording"]),
    }
    if "turns" in row:
        body["turns"] = row["turns"]
    return body


def _entry_json(row: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        name: row[name] for name in (
            "seq", "kind", "user_text", "response_id", "status", "reason", "reply_text",
            "heard_text", "audio_ms", "played_ms", "pauses", "resumes",
        )
    }
    body["started_at"] = _iso(row["started_at"])
    body["ended_at"] = _iso(row["ended_at"])
    body["interrupted"] = row["status"] == "cancelled"
    for name in ("inputs", "timings", "tool_calls", "errors"):
        body[name] = _loaded(row[name])
    return body
