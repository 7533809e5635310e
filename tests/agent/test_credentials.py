"""Keys (rotation, strength), scoped tokens and their call ledger; key-less requests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from starlette.requests import HTTPConnection

from agent.config import Settings
from agent.credentials import ApiKey, CallLedger, KeyRing, parse_keys, read_mint_request
from agent.gate import credential_ok, secret_ok
from agent.hosts import direct_local_request, host_allowed, host_name
from agent.tokens import issue_token, read_token
from pipeline.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]
KEY_A = "a" * 16 + "-0123456789abcdef"
KEY_B = "b" * 16 + "-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VOICEFORGE_"):
            monkeypatch.delenv(name)


def connection(headers: dict[str, str], *, client: str | None = "127.0.0.1",
               path: str = "/ws") -> HTTPConnection:
    scope = {
        "type": "websocket", "scheme": "ws", "path": path, "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "subprotocols": [], "server": ("127.0.0.1", 8000),
        "client": (client, 50000) if client else None,
    }
    return HTTPConnection(scope)


# ---------------------------------------------------------------- key strength


def test_the_env_example_placeholder_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    example = (REPO / ".env.example").read_text(encoding="utf-8")
    placeholder = next(line.split("=", 1)[1] for line in example.splitlines()
                       if line.startswith("VOICEFORGE_API_KEY="))
    monkeypatch.setenv("VOICEFORGE_API_KEY", placeholder)
    with pytest.raises(ConfigurationError, match="placeholder"):
        Settings.from_env().validate()


@pytest.mark.parametrize("key", ["short-key-123", "x" * 31, "your-key-goes-here-0123456789abc"])
def test_short_and_sample_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigurationError, match="VOICEFORGE_API_KEY"):
        Settings(api_key=key).validate()
    with pytest.raises(ConfigurationError, match="'k1'"):
        Settings(api_keys=(ApiKey("k1", key),)).validate()


def test_a_generated_key_is_accepted() -> None:
    Settings(host="0.0.0.0", api_key="3f" * 32).validate()  # openssl rand -hex 32


# ---------------------------------------------------------------- rotation


def test_several_keys_come_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICEFORGE_API_KEYS", f"new:{KEY_A}, old={KEY_B}")
    settings = Settings.from_env()
    assert [k.key_id for k in settings.api_keys] == ["new", "old"]
    assert settings.api_key == KEY_A  # the first signs, and means "a key is set"
    assert KEY_A not in repr(settings) and KEY_B not in repr(settings)
    settings.validate()
    monkeypatch.delenv("VOICEFORGE_API_KEYS")
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated 2026-11\nnew:{KEY_A}\n\nold:{KEY_B}\n", encoding="utf-8")
    monkeypatch.setenv("VOICEFORGE_API_KEYS_FILE", str(keys))
    assert Settings.from_env().api_keys == (ApiKey("new", KEY_A), ApiKey("old", KEY_B))
    monkeypatch.setenv("VOICEFORGE_API_KEY", KEY_A)
    with pytest.raises(ConfigurationError, match="not both"):
        Settings.from_env()
    with pytest.raises(ConfigurationError, match="first of api_keys"):
        Settings(api_key=KEY_B, api_keys=(ApiKey("a", KEY_A), ApiKey("b", KEY_B))).validate()


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "no key"), (KEY_A, "not `id:secret`"), (f"a:{KEY_A},a:{KEY_B}", "unique"),
     (f"bad id:{KEY_A}", "key id"), ("k:", "blank")],
)
def test_unreadable_key_lists_say_why_without_the_secret(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as error:
        parse_keys("VOICEFORGE_API_KEYS", text)
    assert KEY_A not in str(error.value)


def test_tokens_name_their_key_and_only_that_key_verifies_them() -> None:
    ring = KeyRing((ApiKey("new", KEY_A), ApiKey("old", KEY_B)))
    by_old, _ = issue_token(KEY_B, key_id="old", ttl_s=60, now=1000.0)
    assert ring.read_token(by_old, now=1000.0) is not None
    claiming_new, _ = issue_token(KEY_B, key_id="new", ttl_s=60, now=1000.0)
    assert ring.read_token(claiming_new, now=1000.0) is None
    retired = KeyRing((ApiKey("new", KEY_A),))
    assert retired.read_token(by_old, now=1000.0) is None
    assert ring.matching_key(KEY_B) == ApiKey("old", KEY_B)
    assert ring.matching_key(KEY_B[:-1]) is None


# ---------------------------------------------------------------- scope and calls


def test_a_token_carries_its_audience_and_calls() -> None:
    token, _ = issue_token(KEY_A, ttl_s=60, now=0.0, audience=["telephony"], max_calls=1)
    claims = read_token(token, {"default": KEY_A}.get, now=1.0)
    assert claims is not None
    assert claims.audience == {"telephony"} and claims.max_calls == 1
    token, _ = issue_token(KEY_A, ttl_s=60, now=time.time(), audience=["telephony"],
                           max_calls=1)
    assert not secret_ok(token, KEY_A, audience="ws")
    assert not secret_ok(token, KEY_A)  # no audience named: tokens are not accepted
    assert secret_ok(token, KEY_A, audience="telephony")
    assert not secret_ok(token, KEY_A, audience="telephony")  # its one call is spent
    assert secret_ok(KEY_A, KEY_A) and not secret_ok(KEY_A, KEY_A, allow_key=False)
    with pytest.raises(ValueError):
        issue_token(KEY_A, ttl_s=60, now=0.0, audience=["admin"])
    with pytest.raises(ValueError):
        issue_token(KEY_A, ttl_s=60, now=0.0, max_calls=0)


def test_the_ledger_counts_calls_and_stays_bounded() -> None:
    ledger = CallLedger(max_tokens=2)
    ring = KeyRing.of(KEY_A)
    tokens = [issue_token(KEY_A, ttl_s=10, now=0.0, max_calls=2)[0] for _ in range(3)]
    claims = [ring.read_token(token, now=0.0) for token in tokens]
    assert all(claim is not None for claim in claims)
    first, second, third = (claim for claim in claims if claim is not None)
    assert ledger.use(first, 1.0) and ledger.use(first, 1.0)
    assert not ledger.use(first, 1.0)  # its two calls are spent
    assert ledger.use(second, 1.0)
    assert not ledger.use(third, 1.0) and len(ledger) == 2  # full: new tokens wait
    assert ledger.use(third, 11.0) and len(ledger) == 1  # expired entries left


def test_a_mint_request_is_held_to_the_server_caps() -> None:
    asked = read_mint_request(b'{"ttl_s": 9999, "max_calls": 50}', max_ttl_s=60, max_calls=5)
    assert (asked.ttl_s, asked.max_calls, asked.audience) == (60, 5, ("ws", "webrtc"))
    for body in (b"[]", b'{"audience": []}', b'{"max_calls": true}', b"{", b'{"ttl_s": -1}',
                 b'{"scope": "admin"}'):
        with pytest.raises(ValueError):
            read_mint_request(body, max_ttl_s=60, max_calls=5)


# ---------------------------------------------------------------- key-less mode


@pytest.mark.parametrize(
    ("headers", "client", "ok"),
    [
        ({"Host": "127.0.0.1:8000"}, "127.0.0.1", True),
        ({"Host": "localhost:8000", "Origin": "http://localhost:8000"}, "127.0.0.1", True),
        ({"Host": "[::1]:8000"}, "::1", True),
        ({"Host": "rebound.example:8000", "Origin": "http://rebound.example:8000"},
         "127.0.0.1", False),
        ({"Host": "127.0.0.1:8000", "Origin": "https://evil.example"}, "127.0.0.1", False),
        ({"Host": "127.0.0.1:8000", "X-Forwarded-For": "203.0.113.9"}, "127.0.0.1", False),
        ({"Host": "127.0.0.1:8000", "Forwarded": "for=203.0.113.9"}, "127.0.0.1", False),
        ({"Host": "127.0.0.1:8000"}, "192.0.2.7", False),
        ({}, "127.0.0.1", False),
    ],
)
def test_keyless_calls_come_straight_from_this_machine(
    headers: dict[str, str], client: str, ok: bool
) -> None:
    assert direct_local_request(connection(headers, client=client)) is ok
    assert credential_ok(connection(headers, client=client), None) is ok


def test_host_names_and_patterns() -> None:
    assert host_name("[::1]:8000") == "::1"
    assert host_name("Voice.Example.com") == "voice.example.com"
    assert host_name(None) is None
    assert host_allowed("a.example.com", ["*.example.com"])
    assert not host_allowed("example.com.evil", ["*.example.com"])
    assert host_allowed("anything", ["*"]) and not host_allowed(None, ["*"])
