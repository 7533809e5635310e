"""The limits every call lives under (docs/reliability.md), each over a real socket.

Session limit and admission by measured latency (HTTP 503 + Retry-After), idle
timeout and maximum call length (an error, then close 1000), a client that stops
reading (its audio dropped, it is told, the reply cancelled; closed 1008 if it
never reads again), a client that floods frames, and the history rule. The
engines are the fast scripted ones: these are the server's own mechanics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.config import Settings
from loadtest.harness import StubbornClient, bench_engines
from pipeline.engines.bench import ScriptedLLM, ToneTTS
from tests.e2e.conftest import RunningServer, start_server
from tests.e2e.raw import RawSession, subprotocols

pytestmark = pytest.mark.e2e


def metric(server: RunningServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.http}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def wait_until_no_sessions(server: RunningServer, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if not server.app_state.sessions:
            break
        await asyncio.sleep(0.05)
    assert not server.app_state.sessions


async def until_metric(
    server: RunningServer, name: str, at_least: float, timeout_s: float, **labels: str
) -> None:
    """Poll ``/metrics`` (bounded) until the sample reaches ``at_least``."""
    value = 0.0
    for _ in range(int(timeout_s / 0.1)):
        value = await asyncio.to_thread(metric, server, name, **labels)
        if value >= at_least:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{labels} is {value} after {timeout_s} s, not {at_least}")


async def http_get(server: RunningServer, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"{server.http}{path}")


async def closed_with(session: RawSession, timeout_s: float) -> tuple[int, list[str]]:
    """Read until the server closes; its close code and the error codes before it."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await session.wait_for(lambda message: False, timeout_s)
    assert closed.value.rcvd is not None, "the server sent a close frame"
    return closed.value.rcvd.code, [e["code"] for e in session.errors()]


# --------------------------------------------------------------- refusals


async def test_calls_beyond_the_session_limit_get_503_with_a_retry_hint() -> None:
    for server in start_server(Settings(max_sessions=2, retry_after_s=7), bench_engines()):
        async with connect(server.url, subprotocols=subprotocols()) as first, connect(
            server.url, subprotocols=subprotocols()
        ) as second:
            await RawSession.open(first)
            await RawSession.open(second)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url, subprotocols=subprotocols()):
                    pass
            response = refused.value.response
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "7"
            assert b"max_sessions" in response.body
            ready = await http_get(server, "/readyz")
            assert ready.status_code == 503 and "max_sessions" in ready.json()["reasons"]
            assert (await http_get(server, "/healthz")).status_code == 200
        await wait_until_no_sessions(server)
        async with connect(server.url, subprotocols=subprotocols()) as again:
            await RawSession.open(again)
        assert metric(server, "voiceforge_refusals_total", reason="max_sessions") == 1


async def test_new_calls_are_refused_while_the_measured_p95_is_over_budget() -> None:
    slow = ScriptedLLM(first_token_ms=400.0, tokens_per_second=200.0)
    # One call stands for the load here (test_engine_cost.py checks that by default one
    # call cannot trip admission).
    settings = Settings(latency_budget_ms=250.0, admission_min_samples=2, admission_min_calls=1,
                        retry_after_s=3)
    for server in start_server(settings, bench_engines(llm=slow), admission=True):
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            for _ in range(2):
                done = await session.say_hello()
                assert done["timings"]["end_of_turn_to_first_audio_ms"] > 250
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url, subprotocols=subprotocols()):
                    pass
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["Retry-After"] == "3"
            assert b"overloaded" in refused.value.response.body
            ready = (await http_get(server, "/readyz")).json()
            assert "overloaded" in ready["reasons"] and ready["first_audio_p95_ms"] > 250
            # The call already in progress is still served.
            assert (await session.say_hello())["status"] == "completed"
        assert metric(server, "voiceforge_refusals_total", reason="overloaded") == 1


# ---------------------------------------------------------- time limits


async def test_an_idle_call_is_told_and_closed() -> None:
    for server in start_server(Settings(idle_timeout_s=1.0), bench_engines()):
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            # Frames of any kind keep a call alive.
            for _ in range(6):
                await session.send({"type": "output_audio.played", "response_id": "x",
                                    "played_ms": 0})
                await asyncio.sleep(0.3)
            assert not session.errors()
            code, errors = await closed_with(session, 5.0)
        assert (code, errors) == (1000, ["idle_timeout"])
        await wait_until_no_sessions(server)
        assert metric(server, "voiceforge_disconnects_total", reason="idle_timeout") == 1


async def test_a_call_longer_than_the_limit_is_told_and_closed() -> None:
    for server in start_server(Settings(max_call_s=1.5), bench_engines()):
        started = time.monotonic()  # before the server's clock for the call starts
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)

            async def keep_talking() -> None:
                silence = msgpack.packb({"type": "input_audio.append", "audio": bytes(640)})
                for _ in range(200):
                    await ws.send(silence)
                    await asyncio.sleep(0.02)

            talker = asyncio.create_task(keep_talking())
            try:
                code, errors = await closed_with(session, 6.0)
            finally:
                talker.cancel()
                await asyncio.gather(talker, return_exceptions=True)
            assert time.monotonic() - started >= 1.5  # not before the limit; closed by it:
        assert (code, errors) == (1000, ["call_time_limit"])
        assert metric(server, "voiceforge_disconnects_total", reason="call_time_limit") == 1


# --------------------------------------------------------- slow readers


LONG_REPLY = " ".join(["Once upon a time."] * 30)
"""A reply of about 500 s of audio (24 MB): more than the kernel's socket buffers
(a few MB on loopback) hold, so a client that does not read blocks the server."""
LONG_REPLY_FRAMES = len(LONG_REPLY) * 10  # 1 s per character, 100 ms per delta


def _long_reply_server(**limits: Any) -> Iterator[RunningServer]:
    settings = Settings(**{"slow_client_frames": 20, "max_outbound_frames": 400, **limits})
    engines = bench_engines(
        llm=ScriptedLLM(LONG_REPLY, first_token_ms=0.0, tokens_per_second=1000.0),
        tts=ToneTTS(ms_per_char=1000.0, chunk_ms=1000.0),
    )
    yield from start_server(settings, engines)


async def test_a_client_that_pauses_reading_loses_the_reply_audio_and_is_told() -> None:
    for server in _long_reply_server(slow_client_timeout_s=30.0):
        client = await asyncio.to_thread(StubbornClient, server.url)
        try:
            client.send({"type": "conversation.text", "text": "Tell me a long story."})
            # Not reading: the socket fills, then the queue, until the server drops
            # the audio and cancels the reply.
            await until_metric(server, "voiceforge_cancellations_total", 1, 60,
                               reason="client_too_slow")
            done = await asyncio.to_thread(
                client.read_until, lambda m: m["type"] == "response.done", 20
            )
            assert done["status"] == "cancelled" and done["reason"] == "client_too_slow"
            errors = [m["code"] for m in client.messages if m["type"] == "error"]
            assert errors == ["client_too_slow"]
            audio = sum(1 for m in client.messages if m["type"] == "response.audio.delta")
            assert 0 < audio < LONG_REPLY_FRAMES / 2, audio  # most of it was dropped
            # The call goes on.
            client.send({"type": "session.update", "session": {"temperature": 0.2}})
            await asyncio.to_thread(
                client.read_until, lambda m: m["type"] == "session.updated", 10
            )
        finally:
            client.close()
        assert metric(server, "voiceforge_dropped_audio_frames_total") > 0
        assert metric(server, "voiceforge_cancellations_total", reason="client_too_slow") == 1


def _queued_bytes(server: RunningServer) -> int:
    """Bytes the server holds for its one call now, read on the server's loop."""
    (session,) = server.app_state.sessions
    assert session.writer_task is not None
    answer: concurrent.futures.Future[int] = concurrent.futures.Future()
    session.writer_task.get_loop().call_soon_threadsafe(
        lambda: answer.set_result(sum(len(item[1]) for item in session.outbound._items))
    )
    return answer.result(timeout=10)


async def test_what_waits_for_a_client_that_does_not_read_is_bounded_in_bytes() -> None:
    limit = 96 * 1024  # twenty 100 ms deltas of 24 kHz audio
    for server in _long_reply_server(
        slow_client_frames=3000, max_outbound_frames=4000, slow_client_bytes=limit // 2,
        max_outbound_bytes=limit, slow_client_timeout_s=30.0,
    ):
        client = await asyncio.to_thread(StubbornClient, server.url)
        try:
            client.send({"type": "conversation.text", "text": "Tell me a long story."})
            most = 0
            # Not reading: the socket fills, then the queue, until the server gives
            # up on the reply; what it holds meanwhile is sampled all along.
            for _ in range(600):  # 60 s at most
                await asyncio.sleep(0.1)
                most = max(most, await asyncio.to_thread(_queued_bytes, server))
                if await asyncio.to_thread(
                    metric, server, "voiceforge_cancellations_total", reason="client_too_slow"
                ):
                    break
            assert 0 < most <= limit, most
            done = await asyncio.to_thread(
                client.read_until, lambda m: m["type"] == "response.done", 20
            )
            assert done["reason"] == "client_too_slow"
        finally:
            client.close()


async def test_a_client_that_never_reads_again_is_disconnected() -> None:
    for server in _long_reply_server(slow_client_timeout_s=1.5):
        client = await asyncio.to_thread(StubbornClient, server.url)
        try:
            client.send({"type": "conversation.text", "text": "Tell me a long story."})
            await wait_until_no_sessions(server, timeout_s=10.0)
        finally:
            client.close()
        assert metric(server, "voiceforge_disconnects_total", reason="slow_client") == 1
        async with connect(server.url, subprotocols=subprotocols()) as again:
            await RawSession.open(again)


# ------------------------------------------------------------- floods


async def test_a_client_over_the_frame_rate_is_throttled_then_a_flood_is_cut_off() -> None:
    for server in start_server(Settings(), bench_engines()):
        frame = msgpack.packb({"type": "output_audio.played", "response_id": "x",
                               "played_ms": 0})
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            eager = await RawSession.open(ws)
            # 1200 frames back to back: over the 250/s rate after the 500-frame
            # burst unless the server took 2.8 s to read them (pacing them in the
            # test made the rate depend on how loaded the machine was), and never a
            # flood (at most 700 refused): dropped with at most one error a
            # second, call kept.
            started = time.monotonic()
            for _ in range(1200):
                await ws.send(frame)
            # Once the server has read the burst, its bucket refills at 250 frames
            # a second: ask until answered (a question read while the bucket is
            # still empty is dropped like the rest), at most 30 times.
            for _ in range(30):
                await eager.send({"type": "session.update", "session": {"temperature": 0.2}})
                with contextlib.suppress(TimeoutError):
                    await eager.wait_type("session.updated", 1.0)
                    break
            else:
                pytest.fail(f"never answered; saw {[m['type'] for m in eager.log][-5:]}")
            elapsed_s = time.monotonic() - started
            assert {e["code"] for e in eager.errors()} == {"too_many_frames"}
            assert len(eager.errors()) <= 1 + elapsed_s, (len(eager.errors()), elapsed_s)

        async with connect(server.url, subprotocols=subprotocols()) as flood, connect(
            server.url, subprotocols=subprotocols()
        ) as other:
            flooder = await RawSession.open(flood)
            bystander = await RawSession.open(other)
            answer = asyncio.create_task(bystander.say_hello())
            with contextlib.suppress(websockets.ConnectionClosed):
                for _ in range(50_000):  # as fast as the socket takes them
                    await flood.send(frame)
            code, errors = await closed_with(flooder, 10.0)
            assert code == 1008 and errors[-1] == "too_many_frames"
            assert (await asyncio.wait_for(answer, 30))["status"] == "completed"
            assert not bystander.errors()
        assert metric(server, "voiceforge_disconnects_total", reason="flood") == 1


async def test_a_flood_of_text_frames_is_counted_and_cut_off_like_binary_ones() -> None:
    for server in start_server(Settings(), bench_engines()):
        async with connect(server.url, subprotocols=subprotocols()) as flood:
            flooder = await RawSession.open(flood)
            await flood.send("hello")  # one text frame: answered, the call goes on
            assert (await flooder.wait_type("error", 10))["code"] == "malformed_frame"
            with contextlib.suppress(websockets.ConnectionClosed):
                for _ in range(50_000):  # as fast as the socket takes them
                    await flood.send("{}")
            code, errors = await closed_with(flooder, 10.0)
            assert code == 1008 and errors[-1] == "too_many_frames", (code, errors[-3:])
        assert metric(server, "voiceforge_disconnects_total", reason="flood") == 1


async def test_a_thousand_bad_frames_get_a_bounded_number_of_errors() -> None:
    for server in start_server(Settings(), bench_engines()):
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            started = time.monotonic()
            for i in range(1000):  # within the frame rate's burst and refill
                await ws.send(msgpack.packb({"type": f"no.such.type.{i}"}))
                if i % 100 == 99:
                    await asyncio.sleep(0.5)
            await session.send({"type": "session.update", "session": {"temperature": 0.2}})
            await session.wait_type("session.updated", 10)
            elapsed_s = time.monotonic() - started
            errors = session.errors()
            assert {e["code"] for e in errors} == {"unknown_type"}
            # A few a second, whatever the client sends; the first after a pause
            # says how many were held back.
            assert len(errors) <= 3 * (elapsed_s + 1), (len(errors), elapsed_s)
            assert any("more unknown_type errors were not sent" in e["message"] for e in errors)
        # Each bad frame is still counted.
        assert metric(server, "voiceforge_errors_total", code="unknown_type") == 1000


async def test_decoding_over_the_sessions_budget_drops_frames_then_closes_1008() -> None:
    # A budget no frame fits in: every frame after the first is over it.
    settings = Settings(decode_budget_ms_per_s=0.0001, decode_burst_ms=0.0001)
    for server in start_server(settings, bench_engines()):
        async with connect(server.url, subprotocols=subprotocols()) as ws, connect(
            server.url, subprotocols=subprotocols()
        ) as other:
            session = await RawSession.open(ws)
            bystander = await RawSession.open(other)
            frame = msgpack.packb({"type": "input_audio.append", "audio": bytes(640)})

            async def keep_sending(audio: bytes) -> None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    for _ in range(500):  # 10 s at 20 ms a frame
                        await ws.send(audio)
                        await asyncio.sleep(0.02)

            sender = asyncio.create_task(keep_sending(frame))
            try:
                code, errors = await closed_with(session, 15.0)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            assert code == 1008, code
            assert set(errors) == {"decode_budget_exceeded"} and len(errors) <= 4, errors
            # The budget is per call: another caller is served as usual.
            assert (await bystander.say_hello())["status"] == "completed"
        assert metric(server, "voiceforge_disconnects_total", reason="decode_budget") == 1


async def test_audio_credit_does_not_build_up_while_the_caller_is_idle() -> None:
    for server in start_server(Settings(audio_burst_ms=200.0), bench_engines()):
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            frame = msgpack.packb({"type": "input_audio.append", "audio": bytes(640)})
            await ws.send(frame)
            # Two idle seconds would have earned 4 s of credit (2x real time)
            # on top of the 200 ms burst; a token bucket holds the burst only.
            await asyncio.sleep(2.0)
            # 8 s of audio, as fast as the socket takes it: refused beyond the burst
            # unless the server took 3.9 s to read it (with 2 s of audio it took
            # only 0.9 s of reading on a loaded machine to earn the credit honestly).
            started = time.monotonic()
            for _ in range(400):
                await ws.send(frame)
            await session.send({"type": "session.update", "session": {"temperature": 0.2}})
            await session.wait_type("session.updated", 30)
            elapsed_s = time.monotonic() - started
            codes = [e["code"] for e in session.errors()]
            assert set(codes) == {"audio_rate_exceeded"}
            assert len(codes) <= 1 + elapsed_s, (codes, elapsed_s)  # one a second at most


async def test_connections_beyond_the_transport_limit_get_503_from_uvicorn() -> None:
    for server in start_server(Settings(max_sessions=2, max_connections=3), bench_engines()):
        host, port = server.http.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
        try:
            # uvicorn counts a connection once its protocol is set up: poll briefly.
            for _ in range(100):
                response = await http_get(server, "/healthz")
                if response.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert response.status_code == 503
        finally:
            for sock in idle:
                sock.close()
        for _ in range(100):
            response = await http_get(server, "/healthz")
            if response.status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert response.status_code == 200


# -------------------------------------------------------------- history


async def test_history_keeps_the_newest_turns_within_the_limits() -> None:
    llm = ScriptedLLM(reply="Fine.", first_token_ms=0.0, tokens_per_second=500.0)
    for server in start_server(Settings(max_history_turns=4), bench_engines(llm=llm)):
        async with connect(server.url, subprotocols=subprotocols()) as ws:
            session = await RawSession.open(ws)
            for n in range(5):
                await session.send({"type": "conversation.text", "text": f"Question {n}."})
                await session.wait_for(
                    lambda m: m["type"] == "response.done", 20
                )
                session.log.clear()
        last = llm.requests[-1]
        assert [m["role"] for m in last] == ["system", "user", "assistant", "user"]
        assert last[-1]["content"] == "Question 4." and last[1]["content"] == "Question 3."
