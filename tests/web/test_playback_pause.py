"""The playback worklet's pause and resume (protocol 1.1), in a real Chromium.

No agent is needed: the page's files are served by a plain HTTP server and the
test drives the worklet as the SDK does, with real audio time passing. A pause
must stop the frame counter at once while keeping the buffer, a resume must play
on from there, and a clear while paused must flush and refuse later audio.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import WAIT_MS, PageErrors, chromium_args, open_page, playwright_sync

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

WEB = Path(__file__).resolve().parents[2] / "web"

SETUP = """async () => {
    const context = new AudioContext({ latencyHint: "interactive" });
    await context.audioWorklet.addModule("/worklets/playback.js");
    const node = new AudioWorkletNode(context, "voiceforge-playback", {
        numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
    node.connect(context.destination);
    await context.resume();
    const t = { rate: context.sampleRate, played: {}, paused: {}, cleared: {}, dropped: 0,
                audible: 0, buffered: 0 };
    node.port.onmessage = ({ data }) => {
        if (data.type === "status") {
            Object.assign(t.played, data.played);
            t.audible = data.audible; t.buffered = data.buffered;
        } else if (data.type === "paused") t.paused[data.id] = data.frames;
        else if (data.type === "cleared") t.cleared[data.id] = data.frames;
        else if (data.type === "dropped") t.dropped += 1;
    };
    t.audio = (id, seconds) => {
        const pcm = new Int16Array(Math.round(context.sampleRate * seconds)).fill(1000);
        node.port.postMessage({ type: "audio", id, pcm: pcm.buffer, rate: context.sampleRate },
                              [pcm.buffer]);
    };
    t.send = (message) => node.port.postMessage(message);
    window.t = t;
}"""


@pytest.fixture(scope="module")
def static_site() -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(WEB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def page(static_site: str) -> Iterator[tuple[Any, PageErrors]]:
    for opened in open_page(chromium_args(microphone_wav=None)):
        opened[0].goto(f"{static_site}/index.html")
        yield opened


def _wait(page: Any, condition: str, what: str) -> None:
    try:
        page.wait_for_function(condition, timeout=WAIT_MS)
    except playwright_sync.TimeoutError:
        state = page.evaluate("() => JSON.stringify(window.t)")
        pytest.fail(f"timed out waiting for {what}: {state}")


def test_pause_holds_the_buffer_and_resume_plays_on(page: tuple[Any, PageErrors]) -> None:
    tab, errors = page
    tab.evaluate(SETUP)
    tab.evaluate("() => t.audio('r1', 3.0)")
    _wait(tab, "() => (t.played.r1 || 0) > t.rate * 0.2", "playback to start")
    tab.evaluate("() => t.send({ type: 'pause', id: 'r1' })")
    _wait(tab, "() => t.paused.r1 !== undefined", "the worklet to confirm the pause")
    at_pause = tab.evaluate("() => t.paused.r1")
    assert at_pause > 0
    # Audio keeps arriving while paused; it is buffered, not played.
    tab.evaluate("() => t.audio('r1', 0.5)")
    # Half a second of audio time later (several status posts), nothing more played.
    tab.wait_for_timeout(500)
    _wait(tab, "() => t.audible === 0 && t.buffered > 0", "a silent status with a buffer")
    assert tab.evaluate("() => t.played.r1") == at_pause
    tab.evaluate("() => t.send({ type: 'resume', id: 'r1' })")
    _wait(tab, f"() => t.played.r1 > {at_pause} + t.rate * 0.1", "playback to resume")
    # A second pause, then a clear while paused: flushed at the paused position.
    tab.evaluate("() => t.send({ type: 'pause', id: 'r1' })")
    _wait(tab, f"() => t.paused.r1 > {at_pause}", "the second pause")
    second = tab.evaluate("() => t.paused.r1")
    tab.evaluate("() => t.send({ type: 'clear', id: 'r1' })")
    _wait(tab, "() => t.cleared.r1 !== undefined", "the clear")
    assert tab.evaluate("() => t.cleared.r1") == second
    tab.evaluate("() => t.audio('r1', 0.2)")
    _wait(tab, "() => t.dropped === 1", "audio of the cleared reply to be dropped")
    _wait(tab, "() => t.buffered === 0", "an empty buffer")
    # The next reply plays: nothing of the old pause is left behind.
    tab.evaluate("() => t.audio('r2', 0.5)")
    _wait(tab, "() => (t.played.r2 || 0) > 0", "the next reply to play")
    assert tab.evaluate("() => t.played.r1") == second
    assert errors == []
