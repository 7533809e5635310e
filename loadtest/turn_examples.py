"""Complete questions and the same audio cut before its end, for the end-of-turn model.

Spoken by Piper's joe voice with its noise turned off (or by espeak-ng), so the
audio (and the model's answers) are the same on every run. A cut keeps the speech of the full
question up to where its first words end: the quietest 20 ms within 100 ms of
the end of the prefix spoken alone. The cut audio keeps the intonation of a
sentence that goes on, as a caller who pauses mid-sentence does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.audio import resample

FloatArray = npt.NDArray[np.float32]

SAMPLE_RATE = 16000
QUIET_DBFS = -45.0

UTTERANCES: tuple[str, ...] = (
    "Can you tell me what the weather | will be like tomorrow in Paris?",
    "Could you remind me to call my mother and | my sister tomorrow?",
    "What is the capital of | Australia?",
    "How long does it take to | drive from Boston to New York?",
    "Do you know a good restaurant | near the train station?",
    "Can you set an alarm for | seven thirty tomorrow morning?",
    "Is my phone number four one five | two two three eight nine nine one?",
    "What time does the | pharmacy close on Sundays?",
    "Why is the sky | blue during the day?",
    "Where can I buy fresh bread and | cheese around here?",
    "My phone number is four one five |, two two three, eight nine nine one.",
    "I would like to book a table for | four people tonight.",
    "I need to buy eggs, milk, and | bread.",
    "Tell me about the | history of the Roman empire.",
)
"""Each cut after the words before ``|``."""


@dataclass(frozen=True, slots=True)
class TurnExample:
    prefix: str
    text: str
    complete: FloatArray
    """The whole utterance, trailing silence trimmed."""
    cut: FloatArray
    """The same audio, stopped after ``prefix``."""


@lru_cache(maxsize=1)
def _piper_voice() -> Any:
    from piper import PiperVoice

    from pipeline.models import piper_voice_paths

    return PiperVoice.load(piper_voice_paths()[0])


def piper_speak(text: str) -> FloatArray:
    """``text`` in the joe voice, noise off (deterministic), 16 kHz float32."""
    from piper import SynthesisConfig

    voice = _piper_voice()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = voice.synthesize(text, config)
    parts = [np.asarray(chunk.audio_float_array, np.float32) for chunk in chunks]
    return resample(np.concatenate(parts), int(voice.config.sample_rate), SAMPLE_RATE)


def espeak_speak(text: str) -> FloatArray:
    """``text`` by espeak-ng (en-us, 160 words a minute), 16 kHz float32."""
    from loadtest.speech import speak

    return np.asarray(speak(text), dtype=np.float32)


def speech_end(audio: FloatArray) -> int:
    """One past the last sample above -45 dBFS (0 for silence)."""
    loud = np.flatnonzero(np.abs(audio) > 10 ** (QUIET_DBFS / 20))
    return int(loud[-1]) + 1 if len(loud) else 0


def cut_after(prefix: FloatArray, full: FloatArray) -> FloatArray:
    """``full`` stopped at its quietest 20 ms near where ``prefix`` ends."""
    hop = SAMPLE_RATE // 100
    target = speech_end(prefix)
    candidates = range(max(hop, target - 10 * hop), min(len(full) - hop, target + 10 * hop), hop)
    best = min(candidates, key=lambda at: float(np.mean(full[at - hop : at + hop] ** 2)))
    return full[:best]


@lru_cache(maxsize=2)
def turn_examples(voice: str = "piper") -> tuple[TurnExample, ...]:
    """The examples in Piper's joe voice, or (``voice="espeak"``) espeak-ng's en-us."""
    if voice not in ("piper", "espeak"):
        raise ValueError(f"voice must be piper or espeak, got {voice!r}")
    speak = piper_speak if voice == "piper" else espeak_speak
    examples = []
    for utterance in UTTERANCES:
        prefix_text, rest = (part.strip() for part in utterance.split("|"))
        text = prefix_text + rest if rest.startswith(",") else f"{prefix_text} {rest}"
        full = speak(text)
        cut = cut_after(speak(prefix_text), full)
        examples.append(TurnExample(prefix_text, text, full[: speech_end(full)], cut))
    return tuple(examples)


def with_silence(audio: FloatArray, silence_ms: float) -> FloatArray:
    """``audio`` followed by ``silence_ms`` of zeros: what the model sees mid-pause."""
    return np.concatenate([audio, np.zeros(int(silence_ms * SAMPLE_RATE / 1000), np.float32)])
