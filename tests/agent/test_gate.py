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
    assert origin_ok(connection(headers=headers), Settings(allowed_origins=allowed)) is ok


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
