"""Words without which a small model may not call a built-in tool on a turn.

The embedded 0.5B model, offered ``get_current_time``, calls it for turns that have
nothing to do with the clock: two thirds of the turn-taking set's turns ("my phone
number is four one five…", "I need butter, two lemons") in the 2026-11-30 run, each
call ~2 s before the first word (docs/benchmarks.md, "Turn-taking"). Its first-token
probability of opening a call does not separate needed from needless calls
(docs/decisions.md, "Cues before a built-in call"), but the caller's words do: a turn
that asks for the time says "what time", "the date", "what day", "is it Monday"…; one
that ends the call says "bye", "hang up", "that's all"… Single words such as "days"
or "minutes" were tried first and let the model call the clock for "how many days
are there in a week?": the cues are the ways of *asking* for the tool.

So a built-in tool carries cue words, and a model turn may call a tool only when the
caller's last turn holds a cue of at least one offered tool, or one offered tool has
no cues (an operator's or a client's tool: the model decides, as before). A turn
without one is asked in the plain prompt, no tools listed (the embedded engine,
pipeline/engines/llama_cpp.py, keeps a context for each prompt). The cues are the
tools' ways of being asked for, not the benchmark's phrasings, and they are generous:
a cue lets the model decide, it never makes a call. A call may name only a tool whose
cue was heard (or one without cues): the grammar it is written under is built from
those (``cued``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.engines.base import ChatMessage


def _words(*cues: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w'])(?:" + "|".join(cues) + r")(?![\w'])", re.IGNORECASE)


CUES: Mapping[str, re.Pattern[str]] = {
    "get_current_time": _words(
        r"what time", r"the time", r"time is it", r"clock", r"o'?clock",
        r"what (?:day|date|year|month)", r"which day", r"the date", r"today'?s date",
        r"what'?s today", r"what is today", r"is it (?:still )?(?:morning|afternoon|evening|"
        r"night|day|late|early|monday|tuesday|wednesday|thursday|friday|saturday|sunday)",
        r"how late", r"current (?:time|date|day|year)", r"time (?:right )?now",
        r"what hour", r"[ap]\.m\.?",
        r"(?:day|date) (?:is it|today)",
    ),
    "end_call": _words(
        r"bye", r"goodbye", r"good-bye", r"bye-bye", r"hang up", r"hung up",
        r"end (?:the|this|our) call", r"that'?s all", r"that is all", r"that'?ll be all",
        r"that'?s it", r"(?:gotta|got to|have to|need to|must|better) go",
        r"talk (?:to you )?later", r"see you", r"see ya", r"farewell", r"good ?night",
        r"take care",
    ),
    "transfer_call": _words(
        r"transfer", r"speak (?:to|with)", r"talk (?:to|with)", r"person", r"human",
        r"agent", r"representative", r"operator", r"manager", r"supervisor", r"department",
        r"someone", r"somebody", r"connect me", r"put me through", r"sales", r"support",
        r"billing",
    ),
}
"""Cue words of each built-in tool (docs/tools.md). A tool not named here has none."""


def last_user_text(messages: Sequence[ChatMessage]) -> str:
    """What the caller said last: the newest user message's text."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"] or ""
    return ""


def cued(
    utterance: str,
    tools: Sequence[dict[str, Any]],
    cues: Mapping[str, re.Pattern[str]] = CUES,
) -> list[dict[str, Any]]:
    """The tools of ``tools`` (OpenAI's format) a call answering ``utterance`` may name:
    those without cues, and those whose cue the utterance holds."""
    kept = []
    for tool in tools:
        pattern = cues.get(tool.get("function", {}).get("name", ""))
        if pattern is None or pattern.search(utterance):
            kept.append(tool)
    return kept


def call_plausible(
    utterance: str,
    tools: Sequence[dict[str, Any]],
    cues: Mapping[str, re.Pattern[str]] = CUES,
) -> bool:
    """Whether a model turn answering ``utterance`` may call one of ``tools`` (OpenAI's
    format): some offered tool has no cues, or the utterance holds one of its cues."""
    return bool(cued(utterance, tools, cues))
