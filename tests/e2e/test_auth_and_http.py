"""The API key at the handshake, and the HTTP endpoints beside ``/ws``.

The key is presented as a bearer header (servers, SDKs) or as a ``bearer.<key>``
subprotocol (browsers cannot set headers); it must never come back in a response.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.protocol import SUBPROTOCOL
from pipeline.conversation import Engines
from pipeline.events import ResponseDone, ResponseStatus
from tests.e2e.conftest import RunningServer, sharing, start_server
from tests.e2e.raw import RawSession, subprotocols

pytestmark = pytest.mark.e2e

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def keyed_server(embedded_engines: Engines) -> Iterator[RunningServer]:
    yield from start_server(Settings(api_key=API_KEY), sharing(embedded_engines))


def _handshake_text(ws: ClientConnection) -> str:
    response = ws.response
    assert response is not None
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.raw_items())
    return f"{response.status_code} {response.reason_phrase}\n{headers}\n{response.body!r}"


@pytest.mark.parametrize(
    ("headers", "offered"),
    [
        ({}, subprotocols()),
        ({"Authorization": "Bearer wrong-key"}, subprotocols()),
        ({}, subprotocols("bearer.wrong-key")),
        ({"Authorization": f"Basic {API_KEY}"}, subprotocols()),
        ({}, subprotocols(f"bearer.{API_KEY}x")),
    ],
    ids=["no_key", "wrong_bearer", "wrong_subprotocol", "not_bearer", "key_prefix"],
)
async def test_a_missing_or_wrong_key_is_refused_at_the_handshake(
    keyed_server: RunningServer, headers: dict[str, str], offered: list[Subprotocol]
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(keyed_server.url, additional_headers=headers, subprotocols=offered):
            pass
    response = refused.value.response
    assert response.status_code == 403
    assert API_KEY not in repr(response.headers.raw_items()) + repr(response.body)


async def test_a_bearer_header_opens_a_session(keyed_server: RunningServer) -> None:
    async with connect(
        keyed_server.url,
        additional_headers={"Authorization": f"Bearer {API_KEY}"},
        subprotocols=subprotocols(),
    ) as ws:
        session = await RawSession.open(ws)
        assert session.created["session_id"]
        assert ws.subprotocol == SUBPROTOCOL
        assert API_KEY not in _handshake_text(ws) + repr(session.created)


async def test_a_bearer_subprotocol_opens_a_session_and_is_not_echoed(
    keyed_server: RunningServer,
) -> None:
    async with connect(keyed_server.url, subprotocols=subprotocols(f"bearer.{API_KEY}")) as ws:
        session = await RawSession.open(ws)
        assert session.created["session_id"]
        assert ws.subprotocol == SUBPROTOCOL
        assert API_KEY not in _handshake_text(ws) + repr(session.created)


async def test_the_sdk_presents_its_key(keyed_server: RunningServer) -> None:
    async with await VoiceForgeClient.connect(keyed_server.url, api_key=API_KEY) as client:
        assert client.session_id
        assert API_KEY not in repr(client.created)


async def test_http_endpoints_never_show_the_key(keyed_server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=keyed_server.http, timeout=10) as http:
        for path in ("/healthz", "/metrics"):
            response = await http.get(path)
            assert response.status_code == 200
            assert API_KEY not in response.text + repr(response.headers.raw)


async def test_healthz_names_the_engines(server: RunningServer, embedded_engines: Engines) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok"
    assert health["engines"] == {
        "stt": embedded_engines.stt.name,
        "llm": embedded_engines.llm.name,
        "tts": embedded_engines.tts.name,
    }
    assert all(health["engines"].values())
    assert isinstance(health["sessions"], int)


async def test_metrics_count_a_completed_turn(server: RunningServer) -> None:
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.send_text("Say hello.")
        done = None
        for _ in range(10_000):  # every event of one turn; the deadline is per event
            event = await client.next_event(60)
            assert event is not None, "the server closed the connection"
            if isinstance(event, ResponseDone):
                done = event
                break
        assert done is not None and done.status is ResponseStatus.COMPLETED

    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples[("voiceforge_end_of_speech_to_first_audio_seconds_count", ())] >= 1
    stages = {
        dict(labels)["stage"]
        for name, labels in samples
        if name == "voiceforge_stage_seconds_count"
    }
    assert {"llm_first_token", "tts_first_audio"} <= stages, stages
    assert samples[("voiceforge_responses_total", (("status", "completed"),))] >= 1
