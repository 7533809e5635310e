"""The Calls view (web/calls.html) in a real Chromium: recent calls, one call's
transcript, its latency chart and its recording playing from the API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.client import VoiceForgeClient
from agent.config import Settings
from pipeline.engines.bench import ScriptedLLM
from tests.e2e.conftest import RunningServer
from tests.faults.support import bench_engines, collect_until_done, serving
from tests.records.test_calls_api import wait_for_record
from tests.web.conftest import chromium_args, open_page

pytestmark = pytest.mark.browser

REPLY = "Sure, the store opens at nine."


async def _recorded_call(server: RunningServer) -> tuple[str, float]:
    """A typed call with its audio recorded: its id and the recording's length (ms)."""
    async with await VoiceForgeClient.connect(server.url) as client:
        await client.update_session(record_audio=True)
        for question in ("When do you open?", "And <b>on Sunday</b>?"):
            await client.send_text(question)
            await collect_until_done(client)
        call_id = client.session_id
    record = await wait_for_record(server, call_id, lambda r: r["recording"] is not None)
    return call_id, float(record["recording"]["duration_ms"])


def test_the_calls_view_shows_a_call_its_latency_and_plays_its_recording(
    tmp_path: Path,
) -> None:
    engines = bench_engines(llm=ScriptedLLM(REPLY, tokens_per_second=200, first_token_ms=5))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'calls.sqlite3'}",
                        recordings="on_request", recordings_dir=str(tmp_path / "audio"))
    with serving(settings, engines) as server:
        call_id, recorded_ms = asyncio.run(_recorded_call(server))
        # Typed turns: the caller's clock stands still, the two replies follow each other.
        assert recorded_ms > 0
        for page, errors in open_page(chromium_args(microphone_wav=None)):
            page.goto(f"{server.http}/calls.html")
            row = page.locator(f".call-row[data-call-id='{call_id}']")
            row.wait_for()
            assert "2 turns" in row.inner_text()
            row.click()
            page.locator("#timeline li.agent").nth(1).wait_for()
            said = page.locator("#timeline li.user .bubble").all_inner_texts()
            # What the caller typed is shown as text, never as markup.
            assert said == ["When do you open?", "And <b>on Sunday</b>?"]
            assert page.locator("#timeline b").count() == 0
            heard = page.locator("#timeline li.agent .bubble").all_inner_texts()
            assert heard == [REPLY, REPLY]
            bars = page.locator("#latency-chart rect.latency-bar")
            assert bars.count() == 2
            assert all(int(bars.nth(i).get_attribute("data-ms") or 0) > 0 for i in range(2))
            # The recording came through the API and the browser decodes it.
            page.wait_for_function(
                "document.getElementById('recording').readyState >= 1", timeout=30_000
            )
            duration = page.evaluate("document.getElementById('recording').duration")
            assert abs(duration * 1000 - recorded_ms) < 100, (duration, recorded_ms)
            page.fill("#q", "zebra")
            page.click("#search")
            page.wait_for_function(
                "document.getElementById('list-status').textContent === 'No calls match.'"
            )
            assert not errors, errors
