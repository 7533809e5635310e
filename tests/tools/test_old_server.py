"""Client tools against a server older than protocol 1.2: refused in the SDK, with the
versions named, instead of a ``session.update`` the server would reject."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent.client import ClientError, VoiceForgeClient
from agent.protocol import SUBPROTOCOL

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def server_1_0() -> AsyncIterator[str]:
    """A 1.0 server: its ``session.created`` has no ``protocol_minor`` (§3.1)."""
    received: list[bytes] = []

    async def call(connection: ServerConnection) -> None:
        await connection.send(msgpack.packb({
            "type": "session.created",
            "session_id": "sess_000000000000",
            "protocol_version": 1,
            "session": {"input_sample_rate": 16000},
            "limits": {},
        }))
        async for frame in connection:
            received.append(frame if isinstance(frame, bytes) else frame.encode())

    async with serve(call, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"
    assert received == [], "the SDK sent something a 1.0 server would refuse"


async def test_tools_are_refused_before_a_1_0_server_sees_them(server_1_0: str) -> None:
    async with await VoiceForgeClient.connect(server_1_0) as client:
        assert client.created.protocol_minor == 0
        with pytest.raises(ClientError, match=r"protocol 1\.0; client tools need 1\.2"):
            await asyncio.wait_for(
                client.add_tool("lookup", "Look something up.", None, lambda: "found"), 5
            )
