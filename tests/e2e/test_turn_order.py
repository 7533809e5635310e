"""Quick typed turns over the real WebSocket never make two replies play at once.

Issue 13 item 5, reproduced against the real embedded agent (Whisper, llama.cpp,
Piper): four ``conversation.text`` frames sent back to back used to leave two replies
completing together, one of them deaf to ``response.cancel``, and two assistant
turns in a row in history. A raw WebSocket client sees every frame the server sends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.e2e.conftest import RunningServer
from tests.e2e.raw import Message, RawSession, subprotocols

pytestmark = pytest.mark.e2e

TEXTS = ("Hello there.", "What is the capital of France?", "And of Spain?", "Thanks.")


def one_reply_at_a_time(log: Sequence[Message]) -> list[Message]:
    """Check that replies never overlap and each one ends; return their ends in order."""
    in_flight: str | None = None
    done: list[Message] = []
    for message in log:
        kind = message["type"]
        if kind == "response.created":
            assert in_flight is None, f"{message['response_id']} created while {in_flight} runs"
            in_flight = message["response_id"]
        elif kind == "response.done":
            assert message["response_id"] == in_flight, f"{message['response_id']} out of turn"
            in_flight = None
            done.append(message)
        elif message.get("response_id") is not None:
            assert message["response_id"] == in_flight, f"stray {kind} of {message['response_id']}"
    assert in_flight is None, f"{in_flight} never ended"
    return done


async def settle(session: RawSession, conversation: Any, timeout_s: float) -> None:
    """Read frames until the call is idle and every frame it sent before has arrived.

    Idle is read from the server's conversation; a ``session.update`` sent then is
    answered after everything already queued, so its answer marks the end.
    """
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not conversation.busy:
            await session.send({"type": "session.update", "session": {}})
            await session.wait_type("session.updated", left)
            if not conversation.busy:
                return
        with contextlib.suppress(TimeoutError):
            await session.wait_for(lambda m: m["type"] == "response.done", min(left, 5.0))
    raise TimeoutError(f"the call did not settle within {timeout_s}s")


def roles_alternate(conversation: Any) -> None:
    roles = [m["role"] for m in conversation.history.messages()]
    turns = roles[1:]
    assert roles[0] == "system" and turns, roles
    assert turns == ["user", "assistant"] * (len(turns) // 2) + ["user"] * (len(turns) % 2), roles


async def test_four_quick_texts_get_one_reply_at_a_time(server: RunningServer) -> None:
    async with connect(server.url, subprotocols=subprotocols()) as ws:
        session = await RawSession.open(ws)
        conversation = server.conversation(session.created["session_id"])
        for text in TEXTS:
            await session.send({"type": "conversation.text", "text": text})
        await settle(session, conversation, 240)
        done = one_reply_at_a_time(session.log)
        assert done[-1]["status"] == "completed", done[-1]
        assert all(d["status"] == "cancelled" for d in done[:-1])
        assert not session.errors()
        roles_alternate(conversation)
        messages = conversation.history.messages()
        assert messages[-1]["role"] == "assistant"
        assert "spain" in messages[-2]["content"].lower()


async def test_response_cancel_after_quick_texts_silences_the_call(
    server: RunningServer,
) -> None:
    async with connect(server.url, subprotocols=subprotocols()) as ws:
        session = await RawSession.open(ws)
        conversation = server.conversation(session.created["session_id"])
        for text in TEXTS:
            await session.send({"type": "conversation.text", "text": text})
        first_audio = await session.wait_type("response.audio.delta", 120)
        await session.send({"type": "response.cancel"})
        await settle(session, conversation, 120)
        done = one_reply_at_a_time(session.log)
        last = done[-1]
        assert last["response_id"] == first_audio["response_id"]
        assert last["status"] == "cancelled" and last["reason"] == "client_cancelled"
        after = session.log[session.log.index(last) :]
        assert not [m for m in after if m["type"] == "response.audio.delta"]
        roles_alternate(conversation)
