"""Speech generated at test time with espeak-ng (a voice unlike the agent's Piper voice)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipeline.audio import read_wav_mono, resample


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(
    text: str,
    sample_rate: int = 16000,
    *,
    words_per_minute: int = 160,
    voice: str = "en-us",
    pitch: int = 50,
) -> np.ndarray:
    """Return ``text`` spoken by espeak-ng as mono float32 at ``sample_rate``.

    ``voice``: an espeak-ng voice, optionally with a variant (``en-gb+m3``);
    ``pitch``: 0–99.
    """
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed; `make test` installs it")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-p", str(pitch),
             "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        audio, rate = read_wav_mono(wav)
    return resample(audio, rate, sample_rate)


def silence(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    return np.zeros(int(seconds * sample_rate), dtype=np.float32)
