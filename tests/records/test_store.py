"""The record store and its writer against SQLite and a real PostgreSQL server:
migrations, writes, queries, deletion; the buffer while the database is away."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from agent.records import CallFilter, CallRecords, RecordStore, database_url, records_for
from loadtest.postgres import PostgresServer
from pipeline.events import (
    ResponseCreated,
    ResponseDone,
    ResponseStatus,
    TranscriptFinal,
)

FLUSH_S = 30.0


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def play_turn(records: CallRecords, call_id: str, n: int) -> None:
    """One spoken turn and its reply, as the transports feed them."""
    records.observe(call_id, TranscriptFinal(f"question {n}", n * 1000.0, n * 1000.0 + 500))
    records.observe(call_id, ResponseCreated(f"resp_{n}"))
    records.observe(call_id, ResponseDone(f"resp_{n}", ResponseStatus.COMPLETED,
                                          f"answer {n}", f"answer {n}", 500.0, 500.0,
                                          {"llm_first_token_ms": 10.0 * n}))


@pytest.fixture
async def records(db_url: str) -> AsyncIterator[CallRecords]:
    started = records_for(db_url, CollectorRegistry())
    started.start()
    try:
        yield started
    finally:
        await started.stop(FLUSH_S)


async def test_migrations_run_twice_and_from_two_stores_at_once(db_url: str) -> None:
    stores = [RecordStore(database_url(db_url)) for _ in range(2)]
    try:
        await asyncio.gather(*(store.migrate() for store in stores))
        await stores[0].migrate()
        assert await stores[0].list_calls(CallFilter()) == []
    finally:
        for store in stores:
            await store.close()


async def test_a_call_is_written_as_it_goes_and_read_back_whole(records: CallRecords) -> None:
    records.open("call_1", "ws", {"voice": "joe", "instructions": "Be brief."})
    play_turn(records, "call_1", 1)
    assert await records.flushed(FLUSH_S)
    # Written before the call ended: a crash now would lose nothing said so far.
    during = await records.store.get_call("call_1")
    assert during is not None
    assert (during["ended_at"], [e["user_text"] for e in during["timeline"]]) == (
        None, ["question 1"])
    play_turn(records, "call_1", 2)
    records.settings_changed("call_1", {"voice": "amy", "instructions": "Be brief."})
    records.close("call_1", "client_closed")
    assert await records.flushed(FLUSH_S)
    call = await records.store.get_call("call_1")
    assert call is not None
    assert (call["transport"], call["voice"], call["end_reason"]) == ("ws", "amy",
                                                                      "client_closed")
    assert call["settings"] == {"voice": "amy", "instructions": "Be brief."}
    started = dt.datetime.fromisoformat(call["started_at"])
    ended = dt.datetime.fromisoformat(call["ended_at"])
    assert started <= ended <= dt.datetime.now(dt.UTC)
    assert [(e["seq"], e["kind"], e["user_text"], e["heard_text"], e["status"])
            for e in call["timeline"]] == [
        (1, "turn", "question 1", "answer 1", "completed"),
        (2, "turn", "question 2", "answer 2", "completed"),
    ]
    assert call["timeline"][1]["timings"] == {"llm_first_token_ms": 20.0}
    assert call["timeline"][0]["inputs"][0]["audio_end_ms"] == 1500.0
    assert not records.is_open("call_1")


async def test_calls_are_filtered_searched_paged_and_deleted(records: CallRecords) -> None:
    for n, (transport, reason) in enumerate(
        [("ws", "client_closed"), ("webrtc", "peer_closed"), ("telephony", "caller_hung_up")]
    ):
        call_id = f"call_{n}"
        records.open(call_id, transport, {})
        play_turn(records, call_id, n)
        records.close(call_id, reason)
    records.open("call_open", "ws", {})  # still going on
    assert await records.flushed(FLUSH_S)
    store = records.store

    def ids(found: list[dict[str, object]]) -> list[object]:
        return [call["id"] for call in found]

    newest_first = ids(await store.list_calls(CallFilter()))
    assert newest_first == ["call_open", "call_2", "call_1", "call_0"]
    assert ids(await store.list_calls(CallFilter(transport="webrtc"))) == ["call_1"]
    assert ids(await store.list_calls(CallFilter(end_reason="caller_hung_up"))) == ["call_2"]
    assert ids(await store.list_calls(CallFilter(text="ANSWER 1"))) == ["call_1"]
    assert ids(await store.list_calls(CallFilter(text="question"))) == [
        "call_2", "call_1", "call_0"]
    assert ids(await store.list_calls(CallFilter(text="100%"))) == []  # % is a character
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert ids(await store.list_calls(CallFilter(since=future))) == []
    assert len(await store.list_calls(CallFilter(until=future))) == 4
    first = await store.list_calls(CallFilter(limit=2))
    last = first[-1]
    after = await store.list_calls(CallFilter(
        limit=2, before=(dt.datetime.fromisoformat(last["started_at"]), last["id"])))
    assert ids(first) + ids(after) == newest_first
    assert [call["turns"] for call in first] == [0, 1]
    assert await store.delete_call("call_1")
    assert await store.get_call("call_1") is None
    assert not await store.delete_call("call_1")
    assert ids(await store.list_calls(CallFilter(text="answer 1"))) == []


async def test_a_stopped_database_keeps_every_entry_in_the_buffer_until_it_returns(
    postgres: PostgresServer,
) -> None:
    registry = CollectorRegistry()
    records = records_for(postgres.create_database("calls_outage"), registry)
    records.start()
    try:
        records.open("call_x", "ws", {})
        play_turn(records, "call_x", 1)
        assert await records.flushed(FLUSH_S)
        postgres.stop()
        try:
            fed_at = time.perf_counter()
            for n in range(2, 6):
                play_turn(records, "call_x", n)
            records.close("call_x", "client_closed")
            feeding_ms = (time.perf_counter() - fed_at) * 1000
            assert not await records.flushed(2.0)
            assert metric(registry, "voiceforge_record_write_errors_total") >= 1
            assert metric(registry, "voiceforge_records_store_up") == 0
            assert metric(registry, "voiceforge_records_buffered") == 4
        finally:
            postgres.start()
        assert await records.flushed(FLUSH_S)
        assert metric(registry, "voiceforge_records_store_up") == 1
        call = await records.store.get_call("call_x")
        assert call is not None
        assert [e["user_text"] for e in call["timeline"]] == [
            f"question {n}" for n in range(1, 6)]
        assert call["end_reason"] == "client_closed"
        assert metric(registry, "voiceforge_records_dropped_total", reason="buffer_full") == 0
        # Feeding never waited on the database (a generous bound: a timeout would be
        # seconds).
        assert feeding_ms < 1000
    finally:
        await records.stop(FLUSH_S)


async def test_a_full_buffer_drops_new_entries_and_counts_them(postgres: PostgresServer) -> None:
    registry = CollectorRegistry()
    records = records_for(postgres.create_database("calls_full"), registry,
                          max_buffered_entries=3)
    records.start()
    try:
        postgres.stop()
        try:
            records.open("call_y", "ws", {})
            for n in range(1, 6):
                play_turn(records, "call_y", n)
            records.close("call_y", "client_closed")
            assert metric(registry, "voiceforge_records_buffered") == 3
            assert metric(registry, "voiceforge_records_dropped_total",
                          reason="buffer_full") == 2
        finally:
            postgres.start()
        assert await records.flushed(FLUSH_S)
        call = await records.store.get_call("call_y")
        assert call is not None
        assert [e["user_text"] for e in call["timeline"]] == [
            "question 1", "question 2", "question 3"]
        assert call["entries_dropped"] == 2
    finally:
        await records.stop(FLUSH_S)


def test_only_sqlite_and_postgresql_urls_are_taken() -> None:
    assert database_url("sqlite:////tmp/x.db").drivername == "sqlite+aiosqlite"
    assert database_url("postgres://u:p@h/db").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError, match="mysql"):
        database_url("mysql://h/db")
    with pytest.raises(ValueError, match="not a database URL"):
        database_url("not a url")


async def test_stopping_with_the_database_away_gives_up_after_the_flush_timeout(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture,
) -> None:
    records = records_for(postgres.create_database("calls_gone"), CollectorRegistry())
    records.start()
    postgres.stop()
    try:
        records.open("call_z", "ws", {})
        play_turn(records, "call_z", 1)
        started = time.monotonic()
        await records.stop(1.0)  # a still-open call is closed as server_stopped first
        assert time.monotonic() - started < 10
    finally:
        postgres.start()
    assert "could not be written before stopping" in caplog.text
