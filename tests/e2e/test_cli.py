"""The README path: ``voiceforge serve``, then ``voiceforge talk question.wav``.

Both commands run as real subprocesses (``python -m agent.cli``); the question is
a stereo 44.1 kHz WAV, as a user's recording might be. The server runs the default
tier (``pipeline.tiers.DEFAULT_TIER``), the one a new user meets; the rest of the
suite's engine tests run the fast ``small`` tier.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import soundfile

from tests.speech import speak

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"\[voiceforge\] ready: connect to (ws://127\.0\.0\.1:\d+/ws)")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


def _drain(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@pytest.fixture(scope="module")
def served_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    unset = ("VOICEFORGE_API_KEY", "VOICEFORGE_TIER", "VOICEFORGE_FIRST_CHUNK_MAX_WORDS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    with log.open("w") as stderr:
        process = subprocess.Popen(
            _cli("serve", "--port", "0"),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: queue.Queue[str] = queue.Queue()
    # Drained until the process exits, so a chatty server never blocks on a full pipe.
    reader = threading.Thread(target=_drain, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        url = None
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while url is None and (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if process.poll() is not None:
                    break
                continue
            seen.append(line)
            if match := READY.search(line):
                url = match.group(1)
        if url is None:
            pytest.fail(
                f"serve printed no ready line (exit {process.poll()}):\n{''.join(seen)}\n"
                f"{log.read_text()[-4000:]}"
            )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(10)
        if process.stdout is not None:
            process.stdout.close()


def test_python_dash_m_agent_cli_runs() -> None:
    result = subprocess.run(
        _cli("--help"), cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "talk" in result.stdout


def test_talk_sends_a_stereo_wav_and_saves_the_spoken_answer(
    served_url: str, tmp_path: Path
) -> None:
    rate = 44100
    mono = speak("What is the capital of France?", rate)
    question = tmp_path / "question.wav"
    soundfile.write(question, np.stack([mono, mono], axis=1), rate, subtype="PCM_16")
    reply = tmp_path / "reply.wav"

    env = {k: v for k, v in os.environ.items() if k != "VOICEFORGE_API_KEY"}
    result = subprocess.run(
        _cli("talk", str(question), "--url", served_url, "--out", str(reply)),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, output
    you = [line for line in result.stdout.splitlines() if line.startswith("you:")]
    assert you, output
    assert "capital" in you[0].lower() and "france" in you[0].lower(), output
    agent = [line for line in result.stdout.splitlines() if line.startswith("agent:")]
    assert agent and agent[0].removeprefix("agent:").strip(), output
    assert "paris" in agent[0].lower(), output  # the default tier knows it
    assert "end_of_speech_to_first_audio_ms" in result.stdout, output

    audio, reply_rate = soundfile.read(reply, dtype="float32")
    assert audio.ndim == 1
    assert len(audio) / reply_rate >= 0.5, "at least half a second of reply audio"
    assert float(np.sqrt(np.mean(np.square(audio)))) > 0.01, "the reply is not silent"
