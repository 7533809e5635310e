"""The labelled utterances of the turn-taking benchmark (``loadtest.turns``), made at run time.

Four kinds, each drawn from templates with a seeded generator so a run is
reproducible and the set is not a handful of tuned examples:

* ``paused``: a turn with one pause of 300–1500 ms where people really pause
  (inside a digit string, inside a list, after "um", before an object, before a
  name); the pause must **not** end the turn;
* ``complete``: a whole turn, questions and requests down to "yes" and "no thanks";
* ``backchannel``: "mm-hmm", "yeah", … and synthetic coughs and noise bursts, played
  over an agent reply, which must **not** cancel it;
* ``interruption``: "wait, stop", "no, that's not what I asked", … played over an
  agent reply, which must cancel it.

Voices: Piper's joe (deterministic: its noise scales set to 0) and espeak-ng with
several voices, rates and pitches. Every speech segment is trimmed to its acoustic
extent (``loadtest.acoustic``), so a pause is exactly the silence put between two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.acoustic import acoustic_end_ms, acoustic_onset_ms
from loadtest.speech import speak

RATE = 16000
KINDS = ("paused", "complete", "backchannel", "interruption")
PAUSE_RANGE_MS = (300.0, 1500.0)

ESPEAK_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f5", "en-us+m7")

# ------------------------------------------------------------------ vocabulary

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAMES = ("Maria Gonzalez", "Doctor Patel", "James O'Connor", "Aisha Khan", "Tom Becker",
         "Yuki Tanaka", "Olivia Martin", "Samuel Okafor", "my sister Laura", "Mister Novak")
ITEMS = ("eggs", "milk", "a loaf of bread", "two lemons", "rice", "olive oil", "some apples",
         "coffee filters", "a bag of onions", "dish soap", "butter", "orange juice")
OBJECTS = ("a birthday present for my mother", "the blue folder on my desk",
           "tickets for the concert on Saturday", "a new charger for my laptop",
           "the package at the post office", "some flowers for the office",
           "the car keys from the kitchen", "a table near the window")
CITIES = ("Boston", "Lisbon", "Denver", "Nairobi", "Osaka", "Toronto", "Madrid", "Chicago")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _digits(rng: np.random.Generator, count: int) -> str:
    return " ".join(DIGITS[int(d)] for d in rng.integers(0, 10, count))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


# A paused template returns (before the pause, after the pause); the text before it
# is never a complete turn.
PausedTemplate = Callable[[np.random.Generator], tuple[str, str]]


def _phone(rng: np.random.Generator) -> tuple[str, str]:
    lead = _pick(rng, ("my number is", "my phone number is", "you can reach me at",
                       "the number to call is"))
    return f"{lead} {_digits(rng, 3)}", f"{_digits(rng, 3)} {_digits(rng, 4)}"


def _account(rng: np.random.Generator) -> tuple[str, str]:
    lead = _pick(rng, ("my order number is", "the account number is", "my member ID is",
                       "the confirmation code is"))
    return f"{lead} {_digits(rng, 4)}", _digits(rng, int(rng.integers(3, 6)))


def _shopping_list(rng: np.random.Generator) -> tuple[str, str]:
    chosen = [str(x) for x in rng.choice(ITEMS, size=4, replace=False)]
    lead = _pick(rng, ("please add", "I need", "can you put", "we are out of"))
    return f"{lead} {chosen[0]}, {chosen[1]}", f"{chosen[2]} and {chosen[3]}"


def _um(rng: np.random.Generator) -> tuple[str, str]:
    count = _pick(rng, ("two", "three", "four", "six"))
    lead = _pick(rng, ("I would like to book a table for um", "can you set an alarm for uh",
                       "I want to fly to um", "the meeting should be on uh"))
    rest = {
        "I would like to book a table for um": f"{count} people on {_pick(rng, DAYS)} evening",
        "can you set an alarm for uh": f"{count} thirty tomorrow morning",
        "I want to fly to um": f"{_pick(rng, CITIES)} next {_pick(rng, DAYS)}",
        "the meeting should be on uh": f"{_pick(rng, DAYS)} at {count} o'clock",
    }[lead]
    return lead, rest


def _before_object(rng: np.random.Generator) -> tuple[str, str]:
    lead = _pick(rng, ("can you remind me to buy", "I forgot to pick up", "please order",
                       "help me find", "I have to bring"))
    return lead, _pick(rng, OBJECTS)


def _before_name(rng: np.random.Generator) -> tuple[str, str]:
    lead = _pick(rng, ("please call", "I would like to speak to", "send a message to",
                       "my appointment is with", "can you put me through to"))
    tail = _pick(rng, ("", " this afternoon", " as soon as possible", " tomorrow morning"))
    return lead, f"{_pick(rng, NAMES)}{tail}"


def _address(rng: np.random.Generator) -> tuple[str, str]:
    lead = _pick(rng, ("I live at", "ship it to", "the address is"))
    number = _digits(rng, 2)
    street = _pick(rng, ("Elm Street", "Harbor Road", "Maple Avenue", "Station Lane"))
    return f"{lead} {number}", f"{street} in {_pick(rng, CITIES)}"


PAUSED_TEMPLATES: tuple[PausedTemplate, ...] = (
    _phone, _account, _shopping_list, _um, _before_object, _before_name, _address,
)

ONE_WORD = ("yes", "no", "no thanks", "sure", "okay", "yes please", "nope", "that's all",
            "correct", "thank you")


def _question(rng: np.random.Generator) -> str:
    return _pick(rng, (
        f"what is the weather like in {_pick(rng, CITIES)} today?",
        f"can you book a table for {_pick(rng, ('two', 'four', 'five'))} on {_pick(rng, DAYS)}?",
        f"please remind me to call {_pick(rng, NAMES)} tomorrow.",
        f"how long does it take to fly from {_pick(rng, CITIES)} to {_pick(rng, CITIES)}?",
        "what time does the pharmacy close?",
        f"I need {_pick(rng, ITEMS)} and {_pick(rng, ITEMS)} from the store.",
        "could you read me the last message again?",
        f"my number is {_digits(rng, 3)} {_digits(rng, 3)} {_digits(rng, 4)}.",
        "what is the capital of Australia?",
        "turn off the lights in the kitchen please.",
        f"is it going to rain on {_pick(rng, DAYS)}?",
        "how do I reset my password?",
    ))


BACKCHANNELS = ("mm-hmm", "yeah", "right", "okay", "uh-huh", "I see", "sure", "got it",
                "yes", "mm")
INTERRUPTIONS = (
    "wait, stop", "no, that's not what I asked", "hold on, I meant {day}",
    "stop, stop, that's wrong", "actually, cancel that", "sorry, can you repeat the price",
    "no no, I said {city}", "wait, I need to change the time", "excuse me, that's not right",
    "hang on, let me ask something else",
)
PROMPTS = (
    "Tell me about the history of the bicycle in a few sentences.",
    "Can you explain how a rainbow forms?",
    "Describe a good morning routine for a busy person.",
    "Tell me a short story about a dog who finds a treasure.",
    "What should I pack for a week of hiking in the mountains?",
)
"""Questions asked before a backchannel/interruption: their replies run long."""


# -------------------------------------------------------------------- the items


@dataclass
class Item:
    """One labelled utterance, audio at 16 kHz."""

    kind: str
    name: str
    voice: str
    segments: list[str]
    audio: np.ndarray
    pause_ms: float | None = None
    """The silence inside a ``paused`` utterance."""
    last_segment_ms: float = 0.0
    """Where the speech after the pause starts (its acoustic onset), from the start."""
    prompt: str | None = None
    """Over-speech items: the question whose reply they are played over."""

    @property
    def end_ms(self) -> float:
        end = acoustic_end_ms(self.audio, RATE)
        return 0.0 if end is None else end

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "voice": self.voice, "text": self.segments,
            "pause_ms": self.pause_ms, "duration_ms": round(len(self.audio) * 1000 / RATE),
            "prompt": self.prompt,
        }


class Voices:
    """Speaks text with a named voice: ``joe`` (Piper) or ``espeak:VOICE:RATE:PITCH``."""

    def __init__(self) -> None:
        self._piper: Any = None

    def close(self) -> None:
        if self._piper is not None:
            self._piper.close()
            self._piper = None

    def speak(self, text: str, voice: str) -> np.ndarray:
        if voice == "joe":
            audio = self._joe(text)
        else:
            _, name, rate, pitch = voice.split(":")
            audio = speak(text, RATE, words_per_minute=int(rate), voice=name, pitch=int(pitch))
        return _trim(audio)

    def _joe(self, text: str) -> np.ndarray:
        from pipeline.audio import resample
        from pipeline.engines.piper import PiperTTS

        if self._piper is None:
            # No sampling noise: the same text gives the same audio on every run.
            self._piper = PiperTTS(noise_scale=0.0, noise_w_scale=0.0)
        piper = self._piper

        async def synthesize() -> list[np.ndarray]:
            return [chunk async for chunk in piper.synthesize(text)]

        chunks = asyncio.run(synthesize())
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return resample(audio.astype(np.float32), int(piper.sample_rate), RATE)


def _trim(audio: np.ndarray) -> np.ndarray:
    onset, end = acoustic_onset_ms(audio, RATE), acoustic_end_ms(audio, RATE)
    if onset is None or end is None:
        return audio.astype(np.float32)
    return audio[int(onset * RATE / 1000) : int(end * RATE / 1000)].astype(np.float32)


def _silence(ms: float) -> np.ndarray:
    return np.zeros(int(ms * RATE / 1000), dtype=np.float32)


def _voice_names(rng: np.random.Generator, count: int, *, piper: bool) -> list[str]:
    """Alternate Piper joe and espeak-ng variants (voice, rate, pitch) drawn from ``rng``."""
    names = []
    for i in range(count):
        if piper and i % 3 == 0:
            names.append("joe")
            continue
        voice = ESPEAK_VOICES[int(rng.integers(0, len(ESPEAK_VOICES)))]
        names.append(f"espeak:{voice}:{int(rng.integers(135, 195))}:{int(rng.integers(30, 75))}")
    return names


def cough(rng: np.random.Generator) -> np.ndarray:
    """A synthetic cough: a sharp low-passed noise burst and a softer tail (0.25–0.5 s)."""
    burst_ms, tail_ms = float(rng.uniform(60, 140)), float(rng.uniform(150, 350))
    n_burst, n_tail = int(burst_ms * RATE / 1000), int(tail_ms * RATE / 1000)
    noise = rng.normal(0.0, 1.0, n_burst + n_tail)
    width = int(rng.integers(3, 9))
    noise = np.convolve(noise, np.ones(width) / width, mode="same")  # dull the highs
    envelope = np.concatenate([
        np.linspace(0, 1, max(1, n_burst // 6)) ** 0.5,
        np.exp(-np.linspace(0, 3, n_burst - max(1, n_burst // 6))),
        0.35 * np.exp(-np.linspace(0, 4, n_tail)),
    ])
    audio: np.ndarray = noise * envelope
    peak = float(np.max(np.abs(audio)))
    return (audio / peak * rng.uniform(0.25, 0.6)).astype(np.float32)


def noise_burst(rng: np.random.Generator) -> np.ndarray:
    """Broadband noise (a door, a rustle, a bump): 0.1–0.45 s with soft edges."""
    n = int(rng.uniform(100, 450) * RATE / 1000)
    ramp = min(n // 4, int(0.02 * RATE))
    envelope = np.ones(n)
    envelope[:ramp] = np.linspace(0, 1, ramp)
    envelope[n - ramp :] = np.linspace(1, 0, ramp)
    level = 10 ** (rng.uniform(-26, -12) / 20)
    return (rng.normal(0.0, level, n) * envelope).astype(np.float32)


def build_corpus(
    *, seed: int = 12, paused: int = 32, complete: int = 32, backchannels: int = 24,
    interruptions: int = 20, piper: bool = True, progress: Callable[[str], None] | None = None,
) -> tuple[list[Item], dict[str, np.ndarray]]:
    """The labelled set, generated deterministically from ``seed``, and the spoken
    prompts (by text) the over-speech items are played over."""
    rng = np.random.default_rng(seed)
    voices = Voices()
    items: list[Item] = []
    try:
        names = _voice_names(rng, paused, piper=piper)
        for i in range(paused):
            template = PAUSED_TEMPLATES[i % len(PAUSED_TEMPLATES)]
            before, after = template(rng)
            pause = float(rng.uniform(*PAUSE_RANGE_MS))
            first, second = voices.speak(before, names[i]), voices.speak(after, names[i])
            audio = np.concatenate([first, _silence(pause), second])
            items.append(Item(
                "paused", f"paused-{i:02d}-{template.__name__.strip('_')}", names[i],
                [before, after], audio, pause_ms=round(pause), last_segment_ms=len(
                    first) * 1000 / RATE + pause,
            ))
            _report(progress, items, paused + complete + backchannels + interruptions)
        names = _voice_names(rng, complete, piper=piper)
        for i in range(complete):
            text = ONE_WORD[i // 3 % len(ONE_WORD)] if i % 3 == 0 else _question(rng)
            items.append(Item("complete", f"complete-{i:02d}", names[i], [text],
                              voices.speak(text, names[i])))
            _report(progress, items, paused + complete + backchannels + interruptions)
        names = _voice_names(rng, backchannels, piper=piper)
        for i in range(backchannels):
            prompt = PROMPTS[i % len(PROMPTS)]
            if i % 3 == 2:
                make = cough if i % 2 else noise_burst
                items.append(Item("backchannel", f"backchannel-{i:02d}-{make.__name__}",
                                  "synthetic", [make.__name__], make(rng), prompt=prompt))
            else:
                text = BACKCHANNELS[i % len(BACKCHANNELS)]
                items.append(Item("backchannel", f"backchannel-{i:02d}", names[i], [text],
                                  voices.speak(text, names[i]), prompt=prompt))
            _report(progress, items, paused + complete + backchannels + interruptions)
        names = _voice_names(rng, interruptions, piper=piper)
        for i in range(interruptions):
            text = INTERRUPTIONS[i % len(INTERRUPTIONS)].format(
                day=_pick(rng, DAYS), city=_pick(rng, CITIES)
            )
            items.append(Item("interruption", f"interruption-{i:02d}", names[i], [text],
                              voices.speak(text, names[i]), prompt=PROMPTS[i % len(PROMPTS)]))
            _report(progress, items, paused + complete + backchannels + interruptions)
        prompts = {
            text: voices.speak(text, "espeak:en-us:170:50")
            for text in {i.prompt for i in items if i.prompt is not None}
        }
    finally:
        voices.close()
    return items, prompts


def _report(progress: Callable[[str], None] | None, items: list[Item], total: int) -> None:
    if progress is not None and (len(items) % 10 == 0 or len(items) == total):
        progress(f"  speech {len(items)}/{total}")
