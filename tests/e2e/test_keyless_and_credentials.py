"""Issue 13 items 11 and 12, each attack tried over the real transports.

Key-less mode serves this machine only: a page of another site (directly, or by
rebinding its own name to 127.0.0.1) and a caller behind a reverse proxy are
refused. With keys: tokens open only the entry points they were minted for, at
most ``max_calls`` calls each; several keys rotate; the API key itself never
works as a TwiML parameter.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.config import Settings
from agent.credentials import ApiKey
from agent.tokens import issue_token
from loadtest.harness import bench_engines
from tests.e2e.conftest import RunningServer, start_server
from tests.e2e.raw import RawSession, subprotocols

pytestmark = pytest.mark.e2e

NEW_KEY = "new-key-0123456789abcdef0123456789abcdef"
OLD_KEY = "old-key-0123456789abcdef0123456789abcdef"
RETIRED_KEY = "retired-key-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def keyless() -> Iterator[RunningServer]:
    yield from start_server(Settings(), bench_engines())


@pytest.fixture(scope="module")
def rotating() -> Iterator[RunningServer]:
    settings = Settings(api_keys=(ApiKey("new", NEW_KEY), ApiKey("old", OLD_KEY)),
                        token_max_calls=3)
    yield from start_server(settings, bench_engines())


def _port(server: RunningServer) -> int:
    return int(server.http.rsplit(":", 1)[1])


def _start_message(parameters: dict[str, str] | None = None) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
        "start": {
            "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": parameters or {},
        },
    })


async def _wait_until(predicate: object, timeout_s: float = 30.0) -> bool:
    assert callable(predicate)
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def _refused_status(url: str, **kwargs: object) -> int:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, **kwargs):  # type: ignore[arg-type]
            pass
    return refused.value.response.status_code


@asynccontextmanager
async def _rebound(server: RunningServer, name: str) -> AsyncIterator[ClientConnection]:
    """A browser tab on ``name`` after the attacker's DNS answered 127.0.0.1: the TCP
    connection goes to our server, Host and Origin name the attacker's site."""
    sock = socket.create_connection(("127.0.0.1", _port(server)))
    url = f"ws://{name}:{_port(server)}/ws"
    async with connect(url, sock=sock, subprotocols=subprotocols(),
                       origin=f"http://{name}:{_port(server)}") as ws:  # type: ignore[arg-type]
        yield ws


# ------------------------------------------------------------------ item 11


async def test_dns_rebinding_cannot_reach_a_keyless_server(keyless: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with _rebound(keyless, "rebound.example"):
            pass
    assert refused.value.response.status_code == 403
    # Nor its HTTP side (metrics, health, the page): the Host is not a loopback name.
    async with httpx.AsyncClient(base_url=keyless.http, timeout=10) as http:
        for path in ("/metrics", "/healthz", "/"):
            answer = await http.get(path, headers={"Host": "rebound.example"})
            assert answer.status_code == 400, path
        assert (await http.get("/healthz")).status_code == 200
    # This machine's own callers still get in, by any loopback name.
    async with connect(keyless.url, subprotocols=subprotocols(),
                       origin=f"http://localhost:{_port(keyless)}") as ws:  # type: ignore[arg-type]
        assert (await RawSession.open(ws)).created["session_id"]


async def test_a_page_of_another_site_cannot_open_a_keyless_phone_stream(
    keyless: RunningServer,
) -> None:
    telephony = keyless.url.replace("/ws", "/telephony/twilio")
    assert await _refused_status(telephony, origin="https://evil.example") == 403
    assert not keyless.app_state.bridge_sessions
    async with connect(telephony) as ws:  # a media server on this machine: no Origin
        await ws.send(_start_message())
        assert await _wait_until(lambda: len(keyless.app_state.bridge_sessions) == 1)


async def test_keyless_mode_refuses_callers_behind_a_proxy(keyless: RunningServer) -> None:
    for header in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"},
                   {"X-Real-IP": "203.0.113.9"}):
        assert await _refused_status(
            keyless.url, subprotocols=subprotocols(), additional_headers=header
        ) == 403, header
    async with httpx.AsyncClient(base_url=keyless.http, timeout=10) as http:
        offer = await http.post("/webrtc/offer", json={"sdp": "v=0", "type": "offer"},
                                headers={"X-Forwarded-For": "203.0.113.9"})
    assert offer.status_code == 403


async def test_a_keyed_server_answers_the_host_names_it_is_given() -> None:
    settings = Settings(api_key=NEW_KEY, allowed_hosts=("voice.example.com", "*.example.org"))
    for server in start_server(settings, bench_engines()):
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            for host, status in (("voice.example.com", 200), ("eu.example.org", 200),
                                 ("127.0.0.1", 200), ("other.example", 400)):
                answer = await http.get("/healthz", headers={"Host": host})
                assert answer.status_code == status, host


# ------------------------------------------------------------------ item 12


def _mint(server: RunningServer, key: str = NEW_KEY, **body: object) -> dict[str, object]:
    answer = httpx.post(f"{server.http}/v1/session-tokens", json=body or None, timeout=10,
                        headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    minted: dict[str, object] = answer.json()
    return minted


async def test_a_token_opens_only_the_entry_points_it_was_minted_for(
    rotating: RunningServer,
) -> None:
    browser = _mint(rotating)
    assert browser["audience"] == ["ws", "webrtc"] and browser["key_id"] == "new"
    phone = _mint(rotating, audience=["telephony"], max_calls=1)
    assert await _refused_status(
        rotating.url, subprotocols=subprotocols(f"bearer.{phone['token']}")
    ) == 403
    telephony = rotating.url.replace("/ws", "/telephony/twilio")
    async with connect(telephony) as ws:
        await ws.send(_start_message({"api_key": str(browser["token"])}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with connect(telephony) as ws:
        await ws.send(_start_message({"api_key": str(phone["token"])}))
        assert await _wait_until(lambda: len(rotating.app_state.bridge_sessions) == 1)
    assert await _wait_until(lambda: not rotating.app_state.bridge_sessions)
    # Minted for one call: a replay of the TwiML opens nothing.
    async with connect(telephony) as ws:
        await ws.send(_start_message({"api_key": str(phone["token"])}))
        with pytest.raises(ConnectionClosed) as replayed:
            await asyncio.wait_for(ws.recv(), 10)
    assert replayed.value.rcvd is not None and replayed.value.rcvd.code == 1008


async def test_a_token_starts_at_most_its_calls(rotating: RunningServer) -> None:
    minted = _mint(rotating, max_calls=2)
    assert minted["max_calls"] == 2
    assert _mint(rotating, max_calls=1000)["max_calls"] == 3  # the server's cap
    offered = subprotocols(f"bearer.{minted['token']}")
    for _ in range(2):
        async with connect(rotating.url, subprotocols=offered) as ws:
            assert (await RawSession.open(ws)).created["session_id"]
    assert await _refused_status(rotating.url, subprotocols=offered) == 403


async def test_the_master_key_is_refused_as_a_twiml_parameter(
    rotating: RunningServer,
) -> None:
    telephony = rotating.url.replace("/ws", "/telephony/twilio")
    async with connect(telephony) as ws:
        await ws.send(_start_message({"api_key": NEW_KEY}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert not rotating.app_state.bridge_sessions


async def test_rotated_keys_and_their_tokens_are_accepted_until_removed(
    rotating: RunningServer,
) -> None:
    old_token, _ = issue_token(OLD_KEY, key_id="old", ttl_s=60, now=time.time())
    for secret in (NEW_KEY, OLD_KEY, old_token):
        async with connect(rotating.url, subprotocols=subprotocols(f"bearer.{secret}")) as ws:
            assert (await RawSession.open(ws)).created["session_id"]
    assert _mint(rotating, key=OLD_KEY)["key_id"] == "new"  # the first key signs
    retired, _ = issue_token(RETIRED_KEY, key_id="retired", ttl_s=60,
                             now=time.time())
    # Claiming a listed key id does not help a token signed by another key.
    forged, _ = issue_token(RETIRED_KEY, key_id="old", ttl_s=60, now=time.time())
    for secret in (RETIRED_KEY, retired, forged):
        assert await _refused_status(
            rotating.url, subprotocols=subprotocols(f"bearer.{secret}")
        ) == 403

