"""The bridges check the same API key as /ws, and refuse what they cannot read."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.config import Settings
from tests.e2e.conftest import RunningServer, load_embedded_engines, sharing, start_server

pytestmark = pytest.mark.e2e

API_KEY = "bridge-key-123"


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    yield from start_server(Settings(api_key=API_KEY), sharing(load_embedded_engines()))


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}]
)
async def test_an_offer_without_the_key_is_refused(
    keyed_server: RunningServer, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=keyed_server.http) as http:
        reply = await http.post(
            "/webrtc/offer", json={"sdp": "v=0", "type": "offer"}, headers=headers
        )
    assert reply.status_code == 403
    assert API_KEY not in reply.text


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"sdp": "v=0"}',
        b'{"sdp": 1, "type": "offer"}',
        b'{"sdp": "v=0", "type": "answer"}',
    ],
)
async def test_an_unreadable_offer_is_a_400(keyed_server: RunningServer, body: bytes) -> None:
    async with httpx.AsyncClient(base_url=keyed_server.http) as http:
        reply = await http.post(
            "/webrtc/offer", content=body, headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert reply.status_code == 400
    assert not keyed_server.app_state.bridge_sessions


async def test_a_media_stream_without_the_key_is_closed_after_start(
    keyed_server: RunningServer,
) -> None:
    url = keyed_server.url.replace("/ws", "/telephony/twilio")
    start = {
        "event": "start",
        "streamSid": "MZ1",
        "start": {"streamSid": "MZ1", "customParameters": {"api_key": "wrong"}},
    }
    async with connect(url) as ws:
        await ws.send(json.dumps(start))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert not keyed_server.app_state.bridge_sessions
