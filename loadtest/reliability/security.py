"""Security: handshakes without a credential, with a wrong key, an expired token, a
foreign Origin, and an unsigned Twilio request (403 each, counted); tokens minted
with the key only; no secret in the server's log."""

from __future__ import annotations

import time
from typing import Any

from agent.config import Settings
from agent.tokens import issue_token
from loadtest.harness import bench_engines, serving, value
from loadtest.reliability.common import (
    BENCH,
    Context,
    Handshake,
    Result,
    dist,
    handshake,
    metrics,
    ms_since,
)

API_KEY = "reliability-api-key-0123456789abcdef"
TWILIO_TOKEN = "twilio-auth-token-reliability"


async def security(ctx: Context) -> Result:
    r = ctx.result
    n = 3 if ctx.quick else 20
    settings = Settings(api_key=API_KEY, allowed_origins=("https://app.example",),
                        twilio_auth_token=TWILIO_TOKEN, public_url="https://voice.example.com",
                        token_ttl_s=60.0)
    r.settings = {"api_key": "set", "allowed_origins": list(settings.allowed_origins),
                  "twilio_auth_token": "set", "public_url": settings.public_url,
                  "token_ttl_s": settings.token_ttl_s, "attempts_per_case": n,
                  "engines": BENCH}
    expired, _ = issue_token(API_KEY, ttl_s=1.0, now=time.time() - 60)
    key = f"bearer.{API_KEY}"
    async with serving(settings, bench_engines()) as server:
        twilio = server.url.replace("/ws", "/telephony/twilio")
        cases: dict[str, tuple[str, dict[str, Any]]] = {
            "no_credential": (server.url, {}),
            "wrong_key": (server.url, {"extra_subprotocols": ("bearer.wrong-key",)}),
            "expired_token": (server.url, {"extra_subprotocols": (f"bearer.{expired}",)}),
            "bad_origin": (server.url, {"extra_subprotocols": (key,),
                                        "origin": "https://evil.example"}),
            "unsigned_twilio": (twilio, {}),
        }
        outcomes: dict[str, list[Handshake]] = {}
        for name, (url, kwargs) in cases.items():
            ctx.step(f"{name} x{n}")
            outcomes[name] = []
            for _ in range(n):
                attempt = await handshake(url, **kwargs)
                if attempt.call is not None:
                    await attempt.call.close()
                outcomes[name].append(attempt)
        ctx.step(f"mint x{n}; calls with the key and with a token")
        mints = []
        token = ""
        for _ in range(n):
            start = time.perf_counter()
            minted = await ctx.http.post(f"{server.http}/v1/session-tokens",
                                         headers={"Authorization": f"Bearer {API_KEY}"})
            mints.append((minted.status_code, ms_since(start)))
            token = minted.json().get("token", "")
        no_key_mint = await ctx.http.post(f"{server.http}/v1/session-tokens")
        with_key = [await handshake(server.url, extra_subprotocols=(key,)) for _ in range(n)]
        with_token = await handshake(server.url, extra_subprotocols=(f"bearer.{token}",))
        for h in [*with_key, with_token]:
            if h.call is not None:
                await h.call.close()
        samples = await metrics(ctx, server.http)
    logged = "\n".join(ctx.watch.messages())
    r.figures = {
        **{f"{name}_statuses": sorted({h.status for h in hs}) for name, hs in outcomes.items()},
        **{f"{name}_refusal_ms": dist(h.ms for h in hs) for name, hs in outcomes.items()},
        "token_mint_statuses": sorted({s for s, _ in mints}),
        "token_mint_ms": dist(ms for _, ms in mints),
        "token_mint_without_key_status": no_key_mint.status_code,
        "handshake_with_key_ms": dist(h.ms for h in with_key),
        "handshake_with_token_status": with_token.status,
        "refusals_counted": {
            reason: value(samples, "voiceforge_refusals_total", reason=reason)
            for reason in ("unauthorized", "origin", "bad_signature")
        },
    }
    for name, hs in outcomes.items():
        r.check(f"{name}: HTTP 403 every time", all(h.status == 403 for h in hs),
                [h.status for h in hs])
    r.check("tokens minted with the key (200), refused without it (401)",
            all(s == 200 for s, _ in mints) and no_key_mint.status_code == 401,
            (mints, no_key_mint.status_code))
    r.check("the key and a token open calls",
            all(h.status == 101 for h in with_key) and with_token.status == 101)
    r.check("no secret in the server's log",
            API_KEY not in logged and token not in logged and TWILIO_TOKEN not in logged)
    return r
