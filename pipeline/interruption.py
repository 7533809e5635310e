"""Interruptions that are not fooled: pause at once, then decide. Sans-I/O.

When the caller starts speaking while the agent is audible, the reply is paused at
the caller's ear right away (that is what makes an interruption feel fast), and
only then is it decided what the speech was:

* a **backchannel** ("mm-hmm", "yeah", "right", "okay", "uh-huh", "I see") or
  **noise** (a cough, a click, no words recognised): the reply resumes where it
  stopped;
* a **short burst** of under ``short_burst_ms`` voiced whose transcript holds at
  most two short words that are no command, question or number: a backchannel
  Whisper misheard ("MMU" for Piper's "mm-hmm", "Amen" for "mm"), so it resumes;
* a real **interruption** (anything else, or speech that goes on too long to be a
  backchannel): the reply is cancelled, as a barge-in always was.

The voiced time is the overlap's VAD speech frames that are also above an energy
floor (``OverlapTracker.frame``): it leaves out the detector's hangover and quiet
breath, so it measures the burst, not the turn around it.

``OverlapTracker`` is the per-call state machine. It is fed the turn detector's
speech events (on the audio timeline), the current audio time and, once known,
the transcript of the overlapping speech, and answers with actions for the
conversation to carry out (``Pause``, ``Resume``, ``Interrupt``). ``classify`` is
the pure verdict on one piece of overlapping speech.

    IDLE ──overlap──▶ PAUSED ──backchannel/noise──▶ RESUMED ──speech again──▶ PAUSED
                        │                                                      │
                        └──── words / long speech ──▶ INTERRUPTED ◀────────────┘
    any ──turn over / response gone──▶ IDLE
"""

from __future__ import annotations

import enum
import math
import re
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "COMMAND_WORDS",
    "CONNECTIVES",
    "DEFAULT_BACKCHANNELS",
    "NOISE_TRANSCRIPTS",
    "Interrupt",
    "InterruptionConfig",
    "OverlapAction",
    "OverlapPhase",
    "OverlapTracker",
    "Pause",
    "Resume",
    "Verdict",
    "classify",
    "words_of",
]


class Verdict(enum.Enum):
    BACKCHANNEL = "backchannel"
    NOISE = "noise"
    INTERRUPTION = "interruption"


DEFAULT_BACKCHANNELS: frozenset[str] = frozenset(
    {
        "mm hmm", "mhm", "mhmm", "mmhmm", "mm", "hmm", "uh huh", "uhhuh", "uh", "um", "ah",
        "oh", "ooh", "huh", "yeah", "yeh", "yes", "yep", "yup", "ya", "right", "okay", "ok",
        "alright", "all right", "sure", "i see", "got it", "cool", "nice", "great", "wow",
        "exactly", "true", "totally", "indeed", "of course", "o k",
        # Continuers: they ask the agent to go on, which resuming does.
        "and then", "go on", "go ahead", "really", "no way", "interesting", "i know",
        "makes sense", "fair enough",
        # What Whisper writes for them: "mm-hmm" comes out as "Mm-mm", "uh-huh" as
        # "Uh-uh" and "hmm" as "Emm" often enough that these cannot be told apart.
        "mm mm", "uh uh", "hm", "em", "emm", "er", "erm", "eh",
    }
)
"""Phrases (normalised: lower case, words split on spaces and hyphens) that are
listening noises or continuers, not requests. "no", "wait", "stop", questions and
anything with content are not here: they interrupt."""


CONNECTIVES: frozenset[str] = frozenset({"and", "so", "well"})
"""Words allowed around a backchannel but not one alone: Whisper often starts a
short clip with "And" ("And mm" for a "mm-hmm" over the agent)."""

COMMAND_WORDS: frozenset[str] = frozenset(
    {
        "no", "nope", "nah", "not", "stop", "wait", "hold", "hang", "cancel", "quiet",
        "shut", "enough", "but", "actually", "instead", "except", "sorry", "pardon",
        "excuse", "what", "whats", "why", "how", "who", "when", "where", "which", "hello",
        "hey", "help", "repeat", "again", "louder", "slower", "wrong", "dont", "cant",
        "wont", "never", "mean", "meant", "bye", "goodbye", "please", "operator", "agent",
        "human", "person",
    }
)
"""Words that make even a short burst an interruption: a command, a correction, a
question, a turn of the conversation ("yeah, but"). "no" is one of them: alone
over the agent it is far more often a correction than a listening noise, and a
wrongly cancelled reply costs less than an ignored correction (docs/decisions.md)."""

NUMBER_WORDS: frozenset[str] = frozenset(
    {
        "zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight",
        "nine", "ten", "eleven", "twelve", "twenty", "thirty", "fifty", "hundred",
        "thousand",
    }
)
"""A number over the agent is content (a digit of a phone number corrected)."""

NOISE_TRANSCRIPTS: frozenset[str] = frozenset(
    {"you", "thank you", "thanks for watching", "thank you for watching"}
)
"""What Whisper writes for a cough, a breath or a bump: judged as noise."""


@dataclass(frozen=True, slots=True)
class InterruptionConfig:
    long_speech_ms: float = 1500.0
    """Overlapping speech this long interrupts without waiting for its words: no
    backchannel lasts that long, and the caller should not wait for the end of a
    real interruption to be heard."""
    max_backchannel_words: int = 4
    """More words than this is never a backchannel ("yeah, yeah, I see, okay")."""
    min_interruption_ms: float = 300.0
    """Overlapping speech shorter than this never interrupts, whatever its words:
    coughs, clicks and echo residue are shorter, and Whisper hears "you" in them.
    The length a barge-in needed before pauses existed."""
    short_burst_ms: float = 600.0
    """Voiced overlap shorter than this is a short burst: with at most
    ``max_filler_words`` short words that are not commands, questions or numbers it
    is a misheard backchannel, not an interruption. 0 turns the rule off."""
    max_filler_words: int = 2
    max_filler_letters: int = 4
    """Longer words are content ("Tuesday", "Paris"): a short burst with one interrupts."""
    voiced_floor_dbfs: float = -45.0
    """A VAD speech frame quieter than this (RMS) does not count as voiced."""
    backchannels: frozenset[str] = field(default=DEFAULT_BACKCHANNELS)
    noise_words: frozenset[str] = field(default=NOISE_TRANSCRIPTS)
    connectives: frozenset[str] = field(default=CONNECTIVES)
    commands: frozenset[str] = field(default=COMMAND_WORDS)

    def __post_init__(self) -> None:
        if not (self.long_speech_ms > 0.0 and math.isfinite(self.long_speech_ms)):
            raise ValueError(
                f"long_speech_ms must be a finite duration > 0, got {self.long_speech_ms}"
            )
        if not (self.min_interruption_ms >= 0.0 and math.isfinite(self.min_interruption_ms)):
            raise ValueError(
                f"min_interruption_ms must be a finite duration >= 0, got "
                f"{self.min_interruption_ms}"
            )
        if self.max_backchannel_words < 1:
            raise ValueError(
                f"max_backchannel_words must be at least 1, got {self.max_backchannel_words}"
            )
        if not (self.short_burst_ms >= 0.0 and math.isfinite(self.short_burst_ms)):
            raise ValueError(
                f"short_burst_ms must be a finite duration >= 0, got {self.short_burst_ms}"
            )
        if self.max_filler_words < 0 or self.max_filler_letters < 1:
            raise ValueError(
                f"max_filler_words must be >= 0 and max_filler_letters >= 1, got "
                f"{self.max_filler_words} and {self.max_filler_letters}"
            )
        if not (self.voiced_floor_dbfs <= 0.0 and math.isfinite(self.voiced_floor_dbfs)):
            raise ValueError(
                f"voiced_floor_dbfs must be finite and <= 0, got {self.voiced_floor_dbfs}"
            )


DEFAULT_INTERRUPTION_CONFIG = InterruptionConfig()

RECENT_FRAMES = 32
"""Frames remembered for the voiced time before a pause: ~1 s of 32 ms frames,
more than speech takes to be confirmed over the agent."""

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")
_STRETCHED = re.compile(r"([a-z])\1{2,}")


def words_of(text: str) -> list[str]:
    """Lower-case words with punctuation and hyphens gone and stretched letters
    ("mmmm", "hmmm", "yeahhh") squeezed to two, so spellings of one sound compare equal."""
    lowered = text.lower().replace("-", " ")
    cleaned = _NOT_WORD.sub(" ", lowered).replace("'", "")
    words = [_STRETCHED.sub(r"\1\1", word) for word in cleaned.split()]
    # "yeahh" and "okayy": a squeezed stretch that is not a spelling of its own.
    return [word[:-1] if word[-2:] in ("hh", "yy") and word[:-1] != "h" else word for word in words]


def _phrases(backchannels: frozenset[str]) -> list[tuple[str, ...]]:
    # Longest first, so "all right" is taken before "all" could be tried.
    phrases = {tuple(words_of(phrase)) for phrase in backchannels}
    return sorted((p for p in phrases if p), key=len, reverse=True)


def _outside_backchannels(
    words: list[str], phrases: list[tuple[str, ...]], connectives: frozenset[str]
) -> tuple[list[str], bool]:
    """The words that are neither in a backchannel phrase nor connectives, and
    whether any backchannel phrase was found."""
    at = 0
    matched = False
    rest: list[str] = []
    while at < len(words):
        for phrase in phrases:
            if tuple(words[at : at + len(phrase)]) == phrase:
                at += len(phrase)
                matched = True
                break
        else:
            if words[at] not in connectives:
                rest.append(words[at])
            at += 1
    return rest, matched


def _is_filler(text: str, rest: list[str], config: InterruptionConfig) -> bool:
    """Whether the words left beside the backchannels are too few and too short to
    be a request: no command, no question, no number."""
    if len(rest) > config.max_filler_words or "?" in text:
        return False
    return all(
        len(word) <= config.max_filler_letters
        and word not in config.commands
        and word not in NUMBER_WORDS
        and not any(char.isdigit() for char in word)
        for word in rest
    )


def classify(
    text: str | None,
    speech_ms: float,
    config: InterruptionConfig = DEFAULT_INTERRUPTION_CONFIG,
    *,
    voiced_ms: float | None = None,
) -> Verdict:
    """What a stretch of caller speech over the agent was.

    ``text`` is its transcript, or None when none could be had (transcription
    failed): then only its length speaks. ``speech_ms`` is the detector's speech
    time, ``voiced_ms`` the part of it that was voiced and loud enough (None:
    unknown, taken as ``speech_ms``).
    """
    if speech_ms >= config.long_speech_ms:
        return Verdict.INTERRUPTION
    words = words_of(text) if text is not None else []
    rest, matched = _outside_backchannels(words, _phrases(config.backchannels), config.connectives)
    if len(words) <= config.max_backchannel_words and matched and not rest:
        return Verdict.BACKCHANNEL
    if speech_ms < config.min_interruption_ms:
        return Verdict.NOISE
    if text is None:
        return Verdict.INTERRUPTION
    if not words or " ".join(words) in config.noise_words:
        return Verdict.NOISE
    voiced = speech_ms if voiced_ms is None else min(voiced_ms, speech_ms)
    if voiced < config.short_burst_ms and _is_filler(text, rest, config):
        return Verdict.BACKCHANNEL
    return Verdict.INTERRUPTION


# ------------------------------------------------------------------ the tracker


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop the reply at the caller's ear now; keep what is buffered."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class Resume:
    """It was a backchannel or noise: play on from where it paused."""

    verdict: Verdict


@dataclass(frozen=True, slots=True)
class Interrupt:
    """A real interruption: cancel the reply (history keeps what was heard)."""

    verdict: Verdict
    reason: str
    """``long_speech`` or ``words`` or ``no_transcript``."""


OverlapAction = Pause | Resume | Interrupt


class OverlapPhase(enum.Enum):
    IDLE = "idle"
    """No overlap in this turn (or the reply it overlapped is gone)."""
    PAUSED = "paused"
    """The reply is paused; the verdict is pending."""
    RESUMED = "resumed"
    """Judged a backchannel or noise; the reply plays on."""
    INTERRUPTED = "interrupted"
    """Judged an interruption; the reply was cancelled."""


_PHASES: dict[OverlapPhase, frozenset[OverlapPhase]] = {
    OverlapPhase.IDLE: frozenset({OverlapPhase.PAUSED}),
    OverlapPhase.PAUSED: frozenset(
        {OverlapPhase.RESUMED, OverlapPhase.INTERRUPTED, OverlapPhase.IDLE}
    ),
    OverlapPhase.RESUMED: frozenset({OverlapPhase.PAUSED, OverlapPhase.IDLE}),
    OverlapPhase.INTERRUPTED: frozenset({OverlapPhase.IDLE}),
}


class OverlapTracker:
    """One call's overlap state; every time is on the audio timeline (ms).

    The speech counted is the current turn's from the first overlap on, across
    pauses in it: "yeah ... but what about" is judged as one piece once the caller
    speaks again, so a backchannel that turns into a question still interrupts.
    A transcript that arrives while the caller is speaking again is stale (it
    covers only part of the speech) and is ignored.

    ``frame`` is fed every VAD frame *before* the detector's events for it, so the
    frames between the speech's start and its confirmation count as voiced too.
    """

    def __init__(self, config: InterruptionConfig = DEFAULT_INTERRUPTION_CONFIG) -> None:
        self.config = config
        self.phase = OverlapPhase.IDLE
        self.verdict: Verdict | None = None
        """The last verdict on this turn's overlap; None while pending or idle."""
        self._speech_ms = 0.0
        self._speaking_since: float | None = None
        self._voiced_ms = 0.0
        self._overlap_start_ms = 0.0
        self._recent: deque[tuple[float, float]] = deque(maxlen=RECENT_FRAMES)
        """(start, voiced ms) of the last frames: the speech before a pause was sent."""

    @property
    def paused(self) -> bool:
        return self.phase is OverlapPhase.PAUSED

    @property
    def voiced_ms(self) -> float:
        """Voiced, loud-enough overlap so far in this turn."""
        return self._voiced_ms

    def frame(self, start_ms: float, frame_ms: float, *, speech: bool, level: float) -> None:
        """One VAD frame starting at ``start_ms``: ``speech`` is the VAD's verdict,
        ``level`` its RMS (full scale 1.0)."""
        floor = math.pow(10.0, self.config.voiced_floor_dbfs / 20.0)
        voiced = frame_ms if speech and level >= floor else 0.0
        self._recent.append((start_ms, voiced))
        if self.phase is not OverlapPhase.IDLE and start_ms >= self._overlap_start_ms:
            self._voiced_ms += voiced

    def speech_ms(self, now_ms: float) -> float:
        """Overlapping speech so far in this turn."""
        running = 0.0 if self._speaking_since is None else max(0.0, now_ms - self._speaking_since)
        return self._speech_ms + running

    def speech_started(self, at_ms: float, *, agent_audible: bool) -> list[OverlapAction]:
        """Speech began (or came back within the turn) at ``at_ms``."""
        if self._speaking_since is None and self.phase is not OverlapPhase.IDLE:
            self._speaking_since = at_ms
        if not agent_audible or self.phase in (OverlapPhase.PAUSED, OverlapPhase.INTERRUPTED):
            return []
        if self.phase is OverlapPhase.IDLE:
            self._speech_ms = 0.0
            self._speaking_since = at_ms
            self._overlap_start_ms = at_ms
            self._voiced_ms = sum(voiced for start, voiced in self._recent if start >= at_ms)
        self._move(OverlapPhase.PAUSED)
        self.verdict = None
        return [Pause(at_ms)]

    def speech_stopped(self, at_ms: float) -> None:
        if self._speaking_since is not None:
            self._speech_ms += max(0.0, at_ms - self._speaking_since)
            self._speaking_since = None

    def tick(self, now_ms: float) -> list[OverlapAction]:
        """Audio time advanced: speech that outgrew a backchannel interrupts now."""
        if self.phase is OverlapPhase.PAUSED and self.speech_ms(now_ms) >= (
            self.config.long_speech_ms
        ):
            return [self._interrupt(Verdict.INTERRUPTION, "long_speech")]
        return []

    def transcript(self, text: str | None, now_ms: float) -> list[OverlapAction]:
        """The words of the overlapping speech (None: transcription failed)."""
        if self.phase is not OverlapPhase.PAUSED or self._speaking_since is not None:
            return []
        verdict = classify(
            text, self.speech_ms(now_ms), self.config, voiced_ms=self._voiced_ms
        )
        if verdict is Verdict.INTERRUPTION:
            return [self._interrupt(verdict, "words" if text is not None else "no_transcript")]
        self._move(OverlapPhase.RESUMED)
        self.verdict = verdict
        return [Resume(verdict)]

    def final_transcript(self, text: str | None, now_ms: float) -> list[OverlapAction]:
        """The transcript of a turn that has ended while its overlap was pending.

        Unlike ``transcript`` it is judged even when the caller already speaks
        again: an interruption cancels now; a backchannel leaves the reply paused
        for the new speech to decide (``verdict`` says what the ended turn was).
        """
        if self.phase is not OverlapPhase.PAUSED:
            return []
        verdict = classify(
            text, self.speech_ms(now_ms), self.config, voiced_ms=self._voiced_ms
        )
        if verdict is Verdict.INTERRUPTION:
            return [self._interrupt(verdict, "words" if text is not None else "no_transcript")]
        self.verdict = verdict
        if self._speaking_since is not None:
            return []
        self._move(OverlapPhase.RESUMED)
        return [Resume(verdict)]

    def turn_discarded(self) -> list[OverlapAction]:
        """The turn ended too short to be one (the detector's judgement): noise."""
        actions: list[OverlapAction] = []
        if self.phase is OverlapPhase.PAUSED:
            self.verdict = Verdict.NOISE
            actions.append(Resume(Verdict.NOISE))
        self._reset()
        return actions

    def turn_ended(self) -> Verdict | None:
        """The turn is over; returns its verdict (None: no overlap) and forgets it.

        A turn still pending here is decided by the caller from the final
        transcript through ``transcript`` *before* this call.
        """
        verdict = self.verdict
        self._reset()
        return verdict

    def response_gone(self) -> None:
        """The reply ended (completed or cancelled by other means): nothing to resume.

        The verdict is forgotten too: a turn that overlapped a reply which then
        ended is the caller's turn ("yes" to a question at the very end).
        """
        self._reset()

    def _interrupt(self, verdict: Verdict, reason: str) -> Interrupt:
        self._move(OverlapPhase.INTERRUPTED)
        self.verdict = verdict
        return Interrupt(verdict, reason)

    def _reset(self) -> None:
        if self.phase is not OverlapPhase.IDLE:
            self._move(OverlapPhase.IDLE)
        self.verdict = None
        self._speech_ms = 0.0
        self._speaking_since = None
        self._voiced_ms = 0.0

    def _move(self, phase: OverlapPhase) -> None:
        if phase not in _PHASES[self.phase]:
            raise RuntimeError(f"illegal overlap transition {self.phase.name} -> {phase.name}")
        self.phase = phase
