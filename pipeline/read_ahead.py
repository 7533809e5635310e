"""Reading the caller's words ahead of the end of their turn.

An in-process model reads a turn's new words before it writes its first token:
on two cores, ~0.45 s for a question on the 1.5B model, all of it after the
caller has stopped (docs/benchmarks.md). While the caller is still speaking the
model is idle, so every ``read_ahead_interval_ms`` of speech the turn so far is
transcribed (a partial transcript, as for ``transcript.delta``) and the model
reads those words into the call's context, as the last user turn of the prompt
the reply will have. llama.cpp keeps the longest prefix a new prompt shares with
what it holds, so the reply then reads only the words that came after.

The last word of a partial is left out: the audio may end inside it ("Austr"),
and a word read wrongly costs the prompt every token after it. A read is asked
only while the model is idle (``WordReadingLLM.idle``): another call's reply
never waits for it, and under load partials for reading are not even made. When
the caller stops, the read in progress stops at its next step (a few tokens): on
two cores a read still running beside the final transcript slowed that transcript
by as much as the read saved the reply (docs/benchmarks.md).
"""

from __future__ import annotations

import copy

from pipeline.engines.base import LLMEngine, WordReadingLLM
from pipeline.history import History
from pipeline.session import SessionConfig

MIN_WORDS = 2
"""Fewer words than this are not worth a read (the template's tokens around them
cost as much)."""
DEFAULT_READ_AHEAD_INTERVAL_MS = 500.0
"""The server's default ``read_ahead_interval_ms`` where its LLM can read ahead."""

_TRAILING = ".,;:!?…\"')]"


def words_to_read(partial: str) -> str | None:
    """The words of a partial transcript worth reading: all but the last, without
    the punctuation the recogniser put where the audio stopped; None when fewer
    than ``MIN_WORDS`` remain."""
    words = partial.split()[:-1]
    if len(words) < MIN_WORDS:
        return None
    words[-1] = words[-1].rstrip(_TRAILING)
    if not words[-1]:
        words.pop()
    return " ".join(words) if len(words) >= MIN_WORDS else None


def reader(llm: LLMEngine, config: SessionConfig) -> WordReadingLLM | None:
    """The call's model, if it reads ahead and the call asked for it."""
    if config.read_ahead_interval_ms <= 0 or not isinstance(llm, WordReadingLLM):
        return None
    return llm


def transcribing_interval_ms(llm: LLMEngine, config: SessionConfig) -> float:
    """How often to transcribe the turn while the caller speaks: for the partials
    the client asked for and for the model's reads, whichever is more often; 0 =
    never."""
    intervals = [config.partial_transcript_interval_ms]
    if reader(llm, config) is not None:
        intervals.append(config.read_ahead_interval_ms)
    asked = [interval for interval in intervals if interval > 0]
    return min(asked) if asked else 0.0


def stop_reading(llm: LLMEngine) -> None:
    """The caller stopped speaking: a read in progress ends at its next step, so the
    final transcript has the cores (what it read so far is kept)."""
    if isinstance(llm, WordReadingLLM):
        llm.stop_reading()


def read_ahead(llm: WordReadingLLM, history: History, partial: str) -> bool:
    """Have ``llm`` read the history and the words of ``partial`` as the caller's
    turn (the prompt a reply to them would have); False when nothing was asked."""
    words = words_to_read(partial)
    if words is None or not llm.idle:
        return False
    preview = copy.deepcopy(history)
    preview.add_user(words)
    return llm.read_words(preview.messages())
