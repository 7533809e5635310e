"""Speech generated at test time with espeak-ng (a voice unlike the agent's Piper voice),
or with Piper's joe voice (the agent's own, as a clearer speaker)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

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


@lru_cache(maxsize=1)
def _piper_joe() -> Any:
    from piper import PiperVoice

    from pipeline.models import piper_voice_paths

    return PiperVoice.load(piper_voice_paths()[0])


def piper_speak(text: str, sample_rate: int = 16000, *, length_scale: float = 1.0) -> np.ndarray:
    """``text`` in Piper's joe voice, noise off (the same audio every run), as float32.

    ``length_scale`` > 1 speaks slower.
    """
    from piper import SynthesisConfig

    voice = _piper_joe()
    config = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = [np.asarray(c.audio_float_array, np.float32) for c in voice.synthesize(text, config)]
    return resample(np.concatenate(chunks), int(voice.config.sample_rate), sample_rate)
