"""Session tokens, the Origin allowlist, Twilio signatures, and no secret in logs.

A browser must never hold the API key: a backend that has it mints a short-lived
token (``POST /v1/session-tokens``) and the page presents that instead, on
``/ws``, ``/webrtc/offer`` and ``/telephony/twilio`` alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.gate import twilio_signature
from loadtest.harness import bench_engines
from tests.e2e.conftest import RunningServer, start_server
from tests.e2e.raw import RawSession, subprotocols
from tests.faults.support import wait_until

pytestmark = pytest.mark.e2e

API_KEY = "k3y-for-security-tests-0123456789"
TWILIO_TOKEN = "twilio-auth-token-abcdef"
PUBLIC_URL = "https://voice.example.com"


@pytest.fixture(scope="module")
def secured() -> Iterator[RunningServer]:
    settings = Settings(
        api_key=API_KEY,
        allowed_origins=("https://app.example",),
        twilio_auth_token=TWILIO_TOKEN,
        public_url=PUBLIC_URL,
        token_ttl_s=60.0,
    )
    yield from start_server(settings, bench_engines())


def _mint(
    server: RunningServer, *, key: str | None = API_KEY, body: object = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(
        f"{server.http}/v1/session-tokens", headers=headers, json=body, timeout=10
    )


def test_a_token_is_minted_only_with_the_api_key(secured: RunningServer) -> None:
    minted = _mint(secured)
    assert minted.status_code == 200
    body = minted.json()
    assert body["token"].startswith("vf2.default.ws+webrtc.") and API_KEY not in body["token"]
    assert body["ttl_s"] == 60.0
    assert minted.headers["cache-control"] == "no-store"
    assert _mint(secured, body={"ttl_s": 5}).json()["ttl_s"] == 5.0
    assert _mint(secured, body={"ttl_s": 10_000}).json()["ttl_s"] == 60.0  # capped
    assert _mint(secured, body={"ttl_s": "soon"}).status_code == 400
    assert _mint(secured, body={"audience": ["admin"]}).status_code == 400
    assert _mint(secured, body={"max_calls": 0}).status_code == 400
    assert _mint(secured, body=[1]).status_code == 400
    assert _mint(secured, key=None).status_code == 401
    assert _mint(secured, key="wrong").status_code == 401
    # A token cannot mint another: a leaked token dies with its expiry.
    assert _mint(secured, key=body["token"]).status_code == 401


def test_minting_needs_a_configured_key() -> None:
    for server in start_server(Settings(), bench_engines()):
        answer = _mint(server)
        assert answer.status_code == 400 and answer.json()["error"] == "no_api_key"


async def test_a_token_opens_a_call_until_it_expires(secured: RunningServer) -> None:
    minted = _mint(secured, body={"ttl_s": 3, "max_calls": 3}).json()
    token = minted["token"]
    async with await VoiceForgeClient.connect(secured.url, api_key=token) as client:
        assert client.session_id
    async with connect(secured.url, subprotocols=subprotocols(f"bearer.{token}")) as ws:
        session = await RawSession.open(ws)
        await asyncio.sleep(max(0.0, minted["expires_at"] - time.time()) + 0.2)
        # The token gates the start of a call; a call already running goes on.
        done = await session.say_hello()
        assert done["status"] == "completed"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(secured.url, subprotocols=subprotocols(f"bearer.{token}")):
            pass
    assert refused.value.response.status_code == 403
    # A tampered token (expiry pushed out) fails its signature.
    *claims, expiry, nonce, signature = token.split(".")
    forged = ".".join([*claims, str(int(expiry) + 3600), nonce, signature])
    with pytest.raises(InvalidStatus):
        async with connect(secured.url, subprotocols=subprotocols(f"bearer.{forged}")):
            pass


def test_the_webrtc_offer_takes_a_token_and_checks_the_origin(secured: RunningServer) -> None:
    token = _mint(secured).json()["token"]
    offer = {"sdp": "v=0\r\n", "type": "offer"}
    url = f"{secured.http}/webrtc/offer"
    refused = httpx.post(url, json=offer, timeout=10)
    assert refused.status_code == 403
    # Past the key check, the bogus SDP is what gets refused (400, not 403).
    with_token = httpx.post(url, json=offer, headers={"Authorization": f"Bearer {token}"},
                            timeout=10)
    assert with_token.status_code == 400, with_token.text
    wrong_origin = httpx.post(
        url, json=offer, timeout=10,
        headers={"Authorization": f"Bearer {token}", "Origin": "https://evil.example"},
    )
    assert wrong_origin.status_code == 403
    allowed = httpx.post(
        url, json=offer, timeout=10,
        headers={"Authorization": f"Bearer {token}", "Origin": "https://app.example"},
    )
    assert allowed.status_code == 400


async def test_browser_origins_are_checked_at_the_handshake(secured: RunningServer) -> None:
    key = subprotocols(f"bearer.{API_KEY}")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(secured.url, subprotocols=key, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    port = secured.http.rsplit(":", 1)[1]
    for origin in ("https://app.example", f"http://127.0.0.1:{port}"):  # listed; the page's own
        async with connect(secured.url, subprotocols=key, origin=origin) as ws:  # type: ignore[arg-type]
            assert (await RawSession.open(ws)).created["session_id"]
    async with connect(secured.url, subprotocols=key) as ws:  # not a browser: no Origin
        assert (await RawSession.open(ws)).created["session_id"]


async def test_twilio_streams_need_a_valid_signature(secured: RunningServer) -> None:
    telephony = secured.url.replace("/ws", "/telephony/twilio")
    with pytest.raises(InvalidStatus) as unsigned:
        async with connect(telephony):
            pass
    assert unsigned.value.response.status_code == 403
    bad = {"X-Twilio-Signature": twilio_signature("not-the-token", f"{PUBLIC_URL}/x")}
    with pytest.raises(InvalidStatus):
        async with connect(telephony, additional_headers=bad):
            pass
    # Twilio signs the URL it was given: the public wss:// address, not ours.
    signed = {
        "X-Twilio-Signature": twilio_signature(
            TWILIO_TOKEN, "wss://voice.example.com/telephony/twilio"
        )
    }
    token = _mint(secured, body={"audience": ["telephony"], "max_calls": 1}).json()["token"]
    async with connect(telephony, additional_headers=signed) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
            "start": {
                "streamSid": "MZ1", "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"api_key": token},
            },
        }))
        # Signed and keyed: the call runs (a refused one is closed before it is listed).
        await wait_until(lambda: len(secured.app_state.bridge_sessions) == 1, 30,
                         "the signed, keyed call is set up")


def test_twilio_signature_matches_twilios_documented_example() -> None:
    # The worked example of twilio.com/docs/usage/security (URL + sorted params).
    params = {
        "CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
        "From": "+12349013030", "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


async def test_no_secret_reaches_a_log_or_an_answer(
    secured: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = _mint(secured).json()["token"]
    with caplog.at_level(logging.DEBUG, "voiceforge"), caplog.at_level(logging.DEBUG, "uvicorn"):
        for secret in (API_KEY + "x", token + "x", "guess"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(secured.url, subprotocols=subprotocols(f"bearer.{secret}")):
                    pass
            assert API_KEY not in refused.value.response.body.decode(errors="replace")
        answers = [_mint(secured, key="wrong").text, _mint(secured, key=None).text]
        async with connect(secured.url, subprotocols=subprotocols(f"bearer.{token}")) as ws:
            session = await RawSession.open(ws)
            await session.say_hello()
            answers.append(json.dumps(session.created))
    # The server's own log lines (the test's websockets client logs what it sends).
    server_lines = [
        record.getMessage() for record in caplog.records
        if record.name.startswith(("voiceforge", "uvicorn"))
    ]
    assert sum("refused unauthorized" in line for line in server_lines) >= 3
    text = "\n".join(server_lines) + "".join(answers)
    assert API_KEY not in text
    assert token not in text
    assert TWILIO_TOKEN not in text
