"""The call webhook: a finished call's record POSTed to a real HTTP receiver, signed,
and tried again when the receiver fails."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.client import VoiceForgeClient
from agent.config import Settings
from agent.records.webhook import SIGNATURE_HEADER, sign, verify_signature
from loadtest.harness import start_in_thread, stop_in_thread
from pipeline.errors import ConfigurationError
from tests.faults.support import bench_engines, collect_until_done, serving

SECRET = "whsec-test-0123456789abcdef0123456789abcdef"


class Receiver:
    """An HTTP endpoint that fails its first ``fail_first`` requests with 503."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def hook(self, request: Request) -> Response:
        self.requests.append((dict(request.headers), await request.body()))
        return Response(status_code=503 if len(self.requests) <= self.fail_first else 204)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    hook = Receiver(fail_first=1)
    app = Starlette(routes=[Route("/hook", hook.hook, methods=["POST"])])
    server, thread, loop = start_in_thread(app, Settings())
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield hook, f"http://127.0.0.1:{port}/hook"
    finally:
        stop_in_thread(server, thread, loop)


async def test_a_finished_call_is_posted_signed_and_retried(
    receiver: tuple[Receiver, str], tmp_path: Path,
) -> None:
    hook, url = receiver
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'calls.sqlite3'}",
                        call_webhook_url=url, call_webhook_secret=SECRET)
    with serving(settings, bench_engines()) as server:
        async with await VoiceForgeClient.connect(server.url) as client:
            call_id = client.session_id
            await client.send_text("Post this call.")
            await collect_until_done(client)
        deadline = time.monotonic() + 30
        while len(hook.requests) < 2:  # the first answered 503; the retry, 1 s later
            assert time.monotonic() < deadline, hook.requests
            await asyncio.sleep(0.05)
        registry = server.app_state.metrics.registry
        assert registry.get_sample_value("voiceforge_call_webhook_deliveries_total",
                                         {"outcome": "delivered"}) == 1
        assert registry.get_sample_value(
            "voiceforge_call_webhook_attempt_errors_total") == 1
    for headers, body in hook.requests:
        assert headers["voiceforge-event"] == "call.ended"
        assert headers["voiceforge-delivery"] == call_id
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER.lower()], body)
    record = json.loads(hook.requests[-1][1])
    assert (record["id"], record["end_reason"]) == (call_id, "client_closed")
    assert [entry["user_text"] for entry in record["timeline"]] == ["Post this call."]


def test_signatures_fail_on_a_changed_body_an_old_time_or_another_secret() -> None:
    body = b'{"id":"sess_1"}'
    now = 1_800_000_000
    header = sign(SECRET, body, now)
    assert verify_signature(SECRET, header, body, now=now + 10)
    assert not verify_signature(SECRET, header, body + b" ", now=now)
    assert not verify_signature(SECRET, header, body, now=now + 301)
    assert not verify_signature("another-" + SECRET, header, body, now=now)
    assert not verify_signature(SECRET, "garbage", body, now=now)


def test_a_webhook_needs_a_strong_secret_and_the_records() -> None:
    settings = Settings(database_url="sqlite:////tmp/x.sqlite3",
                        call_webhook_url="https://hooks.example.com/calls",
                        call_webhook_secret=SECRET)
    settings.validate()
    for broken, message in (
        (replace(settings, call_webhook_secret=None), "signed"),
        (replace(settings, call_webhook_secret="short"), "characters"),
        (replace(settings, database_url=None), "needs call records"),
        (replace(settings, call_webhook_url="ftp://x"), "http"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            broken.validate()


async def test_a_dropped_call_is_posted_once_it_ends_not_when_it_is_suspended(
    tmp_path: Path,
) -> None:
    """A call resumed after a drop is posted once, with its whole record, when it
    ends; a dropped call never resumed is posted when its resume window passes."""
    hook = Receiver(fail_first=0)
    app = Starlette(routes=[Route("/hook", hook.hook, methods=["POST"])])
    http, thread, loop = start_in_thread(app, Settings())
    url = f"http://127.0.0.1:{http.servers[0].sockets[0].getsockname()[1]}/hook"
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'calls.sqlite3'}",
                        call_webhook_url=url, call_webhook_secret=SECRET,
                        resume_window_s=1.0)
    try:
        with serving(settings, bench_engines()) as server:
            resumer = server.app_state.resumer
            assert resumer is not None
            client = await VoiceForgeClient.connect(server.url, auto_resume=False)
            resumed_id = client.session_id
            await client.send_text("Before the drop.")
            await collect_until_done(client)
            client.drop()
            deadline = time.monotonic() + 30
            while resumer.suspended() < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            token = client.created.resume_token
            async with await VoiceForgeClient.connect(server.url, resume_token=token) as back:
                await back.send_text("After the drop.")
                await collect_until_done(back)
            lost = await VoiceForgeClient.connect(server.url, auto_resume=False)
            lost_id = lost.session_id
            lost.drop()
            while len(hook.requests) < 2:  # the resumed call's end, the lost call's window
                assert time.monotonic() < deadline, hook.requests
                await asyncio.sleep(0.05)
            assert resumer.suspended() == 0
    finally:
        stop_in_thread(http, thread, loop)
    records = [json.loads(body) for _, body in hook.requests]
    assert [(r["id"], r["end_reason"]) for r in records] == [
        (resumed_id, "client_closed"), (lost_id, "client_closed")]
    assert [e["user_text"] for e in records[0]["timeline"]] == [
        "Before the drop.", "After the drop."]
