"""Who may start a call: credentials (key or token), browser origins, Twilio signatures."""

from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection

from agent.config import Settings
from agent.gate import credential_ok, origin_ok, twilio_signature, twilio_signature_ok
from agent.tokens import issue_token

KEY = "the-api-key"


def connection(
    *, headers: dict[str, str] | None = None, subprotocols: list[str] | None = None,
    path: str = "/ws", scheme: str = "ws", host: str = "127.0.0.1:8000",
) -> HTTPConnection:
    raw = [(b"host", host.encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return HTTPConnection({
        "type": "websocket", "scheme": scheme, "path": path, "query_string": b"",
        "headers": raw, "subprotocols": subprotocols or [], "server": ("127.0.0.1", 8000),
    })


def test_the_key_or_a_live_token_is_a_credential() -> None:
    token, _ = issue_token(KEY, ttl_s=60, now=1e10)  # far future: still valid now
    assert credential_ok(connection(headers={"Authorization": f"Bearer {KEY}"}), KEY)
    assert credential_ok(connection(subprotocols=["voiceforge.v1", f"bearer.{token}"]), KEY)
    assert not credential_ok(connection(headers={"Authorization": "Bearer nope"}), KEY)
    assert not credential_ok(connection(), KEY)
    assert credential_ok(connection(), None)  # no key configured: open (loopback only)
    expired, _ = issue_token(KEY, ttl_s=60, now=1000.0)
    assert not credential_ok(connection(headers={"Authorization": f"Bearer {expired}"}), KEY)


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, (), True),  # not a browser page
        ("http://127.0.0.1:8000", (), True),  # the page this server serves
        ("http://evil.example", (), False),
        ("https://app.example", ("https://app.example/",), True),
        ("https://app.example.evil", ("https://app.example",), False),
        ("http://evil.example", ("*",), True),
    ],
)
def test_origins(origin: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    headers = {"Origin": origin} if origin else {}
    settings = Settings(api_key=KEY, allowed_origins=allowed)
    assert origin_ok(connection(headers=headers), settings) is ok


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        (None, "127.0.0.1:8000", True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://localhost:5173", "127.0.0.1:8000", True),  # a dev server on this machine
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://rebound.example:8000", "rebound.example:8000", False),  # DNS rebinding
        ("https://evil.example", "127.0.0.1:8000", False),
    ],
)
def test_without_a_key_only_loopback_pages_may_call(
    origin: str | None, host: str, ok: bool
) -> None:
    headers = {"Origin": origin} if origin else {}
    for allowed in ((), ("*",), ("https://evil.example",)):
        settings = Settings(allowed_origins=allowed)
        assert origin_ok(connection(headers=headers, host=host), settings) is ok


def test_twilio_signatures_are_checked_against_the_public_url() -> None:
    settings = Settings(twilio_auth_token="tok", public_url="https://voice.example.com")
    good = twilio_signature("tok", "wss://voice.example.com/telephony/twilio")
    signed = connection(headers={"X-Twilio-Signature": good}, path="/telephony/twilio")
    assert twilio_signature_ok(signed, settings)
    # What this process sees (ws://127.0.0.1:8000/...) is not what Twilio signed.
    local = twilio_signature("tok", "ws://127.0.0.1:8000/telephony/twilio")
    assert not twilio_signature_ok(
        connection(headers={"X-Twilio-Signature": local}, path="/telephony/twilio"), settings
    )
    assert not twilio_signature_ok(connection(path="/telephony/twilio"), settings)
    assert twilio_signature_ok(connection(path="/telephony/twilio"), Settings())  # not set
