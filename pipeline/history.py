"""Conversation history, truncated to what the caller actually heard (sans-I/O).

When the caller barges in, the assistant's reply stops mid-way. The history must
hold the part that was played, not the part that was generated, or the LLM will
believe it said things the caller never heard. `heard_text` computes that part from
the chunk timeline; `History` keeps the turns the LLM sees; `fit_to_context` trims
a request to the model's context by tokens (an engine that can count them calls it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.engines.base import ChatMessage

__all__ = ["History", "SpokenChunk", "fit_to_context", "heard_text"]


class History:
    """The system prompt and the user/assistant turns, oldest first."""

    def __init__(
        self, system_prompt: str, *, max_turns: int = 50, max_chars: int | None = None
    ) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        if max_chars is not None and max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, got {max_chars}")
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        """Messages kept besides the system prompt (a turn is one message); beyond it
        the oldest user turn goes, with the assistant's reply to it."""
        self.max_chars = max_chars
        """Characters of the kept turns (a proxy for the LLM's context); beyond it the
        oldest turns go by the same rule (one turn longer than the limit stays)."""
        self.dropped = 0
        """Turns dropped so far by either limit."""
        self._turns: list[ChatMessage] = []

    def add_user(self, text: str) -> None:
        """Add what the caller said.

        When the last turn is also the user's (the reply in between was never heard),
        the text joins it: the LLM sees one user turn, as the caller experienced it.
        Joined, it keeps at most ``max_chars`` (its newest words; never less than
        ``text``): a caller sending turn after turn over replies it never hears would
        otherwise grow one turn without end, and copy it whole at every turn.
        Empty text is ignored.
        """
        text = text.strip()
        if not text:
            return
        if self._turns and self._turns[-1]["role"] == "user":
            merged = f"{self._turns[-1]['content']} {text}"
            if self.max_chars is not None:
                merged = merged[-max(self.max_chars, len(text)) :]
            self._turns[-1] = ChatMessage(role="user", content=merged)
        else:
            self._turns.append(ChatMessage(role="user", content=text))
        self._trim()

    def add_tool_round(self, calls: Sequence[dict[str, object]], results: Sequence[str]) -> None:
        """Add the model's tool calls (OpenAI ``tool_calls`` entries) and their results,
        in call order: the next request shows the model what it asked and got."""
        if not calls:
            return
        self._turns.append(ChatMessage(role="assistant", content="", tool_calls=list(calls)))
        for call, result in zip(calls, results, strict=True):
            self._turns.append(
                ChatMessage(role="tool", content=result, tool_call_id=str(call["id"]))
            )
        self._trim()

    def add_assistant(self, text: str) -> None:
        """Add what the caller heard of a reply; nothing when nothing was heard."""
        text = text.strip()
        if not text:
            return
        self._turns.append(ChatMessage(role="assistant", content=text))
        self._trim()

    def rewrite(self, role: str, old: str, new: str) -> bool:
        """The newest ``role`` turn whose text is (or, joined, holds) ``old`` keeps
        ``new`` in its place (the turn goes when nothing is left); False when no
        turn holds it. A client that edits its conversation (the Realtime API's
        item delete and late truncate) changes the same turns the LLM reads."""
        old, new = old.strip(), new.strip()
        if not old:
            return False
        for index in range(len(self._turns) - 1, -1, -1):
            turn = self._turns[index]
            content = turn["content"]
            if turn["role"] != role or old not in content or turn.get("tool_calls"):
                continue
            replaced = new if content.strip() == old else " ".join(
                content.replace(old, new, 1).split()
            )
            if replaced:
                self._turns[index] = ChatMessage(role=turn["role"], content=replaced)
            else:
                del self._turns[index]
            return True
        return False

    def restore(self, message: ChatMessage) -> None:
        """Append a turn as it was kept before (a resumed call's history), any role
        but the system prompt's, within the same limits."""
        if message["role"] == "system":
            raise ValueError("the system prompt is not a turn")
        self._turns.append(message.copy())
        self._trim()

    def messages(self) -> list[ChatMessage]:
        """The system prompt, then the turns; a fresh list the caller may keep."""
        system = ChatMessage(role="system", content=self.system_prompt)
        return [system, *(m.copy() for m in self._turns)]

    def __len__(self) -> int:
        return len(self._turns)

    def _over_limit(self) -> bool:
        if len(self._turns) > self.max_turns:
            return True
        if self.max_chars is None or len(self._turns) <= 1:
            return False
        return sum(message_chars(turn) for turn in self._turns) > self.max_chars

    def _trim(self) -> None:
        # A user turn goes with the reply to it (its tool calls and results too), so
        # the oldest turn left is a user's (or the assistant's greeting, which has no
        # user turn before it), and a tool result never outlives the call it answers.
        while self._over_limit():
            self._turns.pop(0)
            self.dropped += 1
            while self._turns and self._turns[0]["role"] != "user" and len(self._turns) > 1:
                self._turns.pop(0)
                self.dropped += 1


def message_chars(message: ChatMessage) -> int:
    """A message's size for the history bound: its text and any tool calls it made."""
    calls = message.get("tool_calls")
    return len(message["content"]) + (len(json.dumps(calls)) if calls else 0)


def fit_to_context(
    messages: Sequence[ChatMessage], count_tokens: Callable[[str], int], budget: int
) -> list[ChatMessage] | None:
    """The newest ``messages`` whose tokens fit ``budget``; None when nothing fits.

    The system messages and the newest turn are always kept; the oldest turns go
    first, a user turn with the assistant's reply to it (the rule ``History`` uses),
    so the model never sees a reply without its question. ``count_tokens`` gives a
    message's cost (its content plus the chat template around it). None when the
    system messages and the newest turn alone are over ``budget``.
    """
    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]

    def cost(message: ChatMessage) -> int:
        calls = message.get("tool_calls")
        return count_tokens(message["content"]) + (count_tokens(json.dumps(calls)) if calls else 0)

    used = sum(cost(m) for m in system) + sum(cost(m) for m in turns)
    start = 0
    # The newest user turn and everything after it (its tool calls) always stay.
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=0)
    keep_from = min(last_user, len(turns) - 1)
    while used > budget and start < keep_from:
        used -= cost(turns[start])
        start += 1
        while start < keep_from and turns[start]["role"] != "user":
            used -= cost(turns[start])
            start += 1
    if used > budget:
        return None
    return [m.copy() for m in [*system, *turns[start:]]]


@dataclass(frozen=True, slots=True)
class SpokenChunk:
    text: str
    """Display text of the chunk."""
    start_ms: float
    """Where this chunk's audio starts in the response's audio timeline."""
    end_ms: float
    """Where it ends."""


def heard_text(chunks: Sequence[SpokenChunk], played_ms: float) -> str:
    """The part of a reply the caller heard when playback stopped at ``played_ms``.

    A chunk that ended by ``played_ms`` was heard whole; nothing after the chunk
    being played was heard (a stop in a silent gap between chunks keeps exactly the
    chunks before it). Of the chunk being played the caller heard the fraction of its
    words that its elapsed time gives, rounded down: a word counts as heard only once
    its share of the chunk's audio has played in full, so the LLM is never told the
    caller heard a word that was cut off.
    """
    if played_ms <= 0:
        return ""
    heard: list[str] = []
    for chunk in sorted(chunks, key=lambda c: c.start_ms):
        if chunk.end_ms <= played_ms:
            heard.append(chunk.text)
            continue
        if chunk.start_ms < played_ms:
            words = chunk.text.split()
            fraction = (played_ms - chunk.start_ms) / (chunk.end_ms - chunk.start_ms)
            # The epsilon: float error (2.9999999999999996) must not cost a word.
            heard.append(" ".join(words[: math.floor(fraction * len(words) + 1e-9)]))
        break
    return " ".join(" ".join(heard).split())
