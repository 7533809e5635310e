"""The page's "Add a voice": recorded from the (fake) microphone in a real Chromium and
cloned by a tiny random-weight Chatterbox; uploaded to Piper, which says it cannot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile

from agent.config import Settings
from pipeline.conversation import Engines
from pipeline.engines.bench import ScriptedLLM, ScriptedSTT
from pipeline.vad import BatchedVADWorker, SileroVAD
from tests.e2e import conftest as e2e
from tests.e2e.conftest import RunningServer
from tests.web.conftest import PageErrors, chromium_args, open_page

pytestmark = [
    pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(400),
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning"),
    pytest.mark.filterwarnings("ignore:`LoRACompatibleLinear` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:'(aifc|sunau|audioop)' is deprecated:DeprecationWarning"),
]


def _reference_wav(path: Path, seconds: float = 12.0) -> Path:
    from tests.chatterbox.test_voice_api import _voice_recording

    soundfile.write(path, _voice_recording(seconds, 48_000), 48_000, subtype="PCM_16")
    return path


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[Any, PageErrors]]:
    yield from open_page(chromium_args(microphone_wav=_reference_wav(tmp_path / "mic.wav")))


@pytest.fixture(scope="module")
def cloning_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, Path]]:
    pytest.importorskip("chatterbox")
    from tests.chatterbox.test_voice_api import _engine
    from tests.chatterbox.tiny_model import write_checkpoint, write_reference_wav

    root = tmp_path_factory.mktemp("page-voices")
    voices = root / "voices"
    voices.mkdir()
    config = write_checkpoint(root / "checkpoint", write_reference_wav(root / "b.wav"))
    tts = _engine(root / "checkpoint", config, voices)
    engines = Engines(stt=ScriptedSTT(), llm=ScriptedLLM(), tts=tts,
                      vad=BatchedVADWorker(SileroVAD()))
    try:
        for running in e2e.start_server(Settings(voices_dir=str(voices)), engines):
            yield running, voices
    finally:
        tts.close()


def test_a_voice_recorded_on_the_page_is_cloned_and_offered(
    cloning_server: tuple[RunningServer, Path], page: tuple[Any, PageErrors]
) -> None:
    server, voices = cloning_server
    browser_page, errors = page
    browser_page.goto(server.http + "/")
    browser_page.locator("#voice-library summary").click()
    browser_page.locator("#voice-record").click()
    browser_page.wait_for_function(
        "document.getElementById('voice-note').textContent.startsWith('Recorded')"
    )
    browser_page.fill("#voice-name", "Mic voice")
    browser_page.locator("#voice-add").click()
    browser_page.wait_for_function(
        "/^(Added|The|the|Could)/.test(document.getElementById('voice-note').textContent)"
    )
    note = browser_page.locator("#voice-note").text_content()
    assert note is not None and note.startswith("Added Mic voice"), note
    chosen = browser_page.locator("#voice").input_value()
    assert chosen.startswith("voice_") and (voices / f"{chosen}.wav").is_file()
    assert chosen in server.app_state.engines.tts.voices()
    assert not errors


def test_piper_tells_the_page_it_cannot_clone(
    tmp_path: Path, embedded_engines: Engines, page: tuple[Any, PageErrors]
) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    for server in e2e.start_server(Settings(voices_dir=str(voices)),
                                   e2e.sharing(embedded_engines)):
        browser_page, errors = page
        browser_page.goto(server.http + "/")
        browser_page.locator("#voice-library summary").click()
        browser_page.fill("#voice-name", "Upload")
        browser_page.set_input_files("#voice-file", str(_reference_wav(tmp_path / "up.wav", 5)))
        browser_page.locator("#voice-add").click()
        browser_page.wait_for_function(
            "document.getElementById('voice-note').textContent.includes('cannot clone')"
        )
        assert not errors
    assert list(voices.iterdir()) == []
