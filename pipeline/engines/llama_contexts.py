"""Each call's llama.cpp context kept between its turns, so a turn re-reads only what is new.

llama-cpp-python reuses the longest common prefix of the previous prompt on its
own, and one call's next turn shares its whole history with the last one: alone,
a call pays only for its new words. Calls served in turn by one model evict each
other's context, though, and each turn of each call would then re-read the system
prompt and the whole history (hundreds of tokens: seconds on a small CPU).

``CallContexts`` swaps contexts when the model changes hands: before serving call
B after call A, it saves A's context (the token ids and llama.cpp's state: the
KV cells in use and the last logits) and restores B's if B has one. The
library's own prefix match then keeps whatever of B's context the new prompt
shares and evaluates the rest. Nothing is saved while one call keeps the model,
so a single caller pays nothing for this. Saved contexts are bounded in bytes
(least recently used dropped first) and dropped when their call ends.

A new call has no context of its own, and starts from whatever the model holds:
after another call's turn that shares its instructions, but after an answer round
(the plain prompt that follows a tool call, run outside any call) or a call with
other instructions, it would re-read its instructions and tools (~250 tokens with
the built-in tools: 1–2 s on two cores). So the last call read-ahead (``warm``)
is kept as the *base*, and a new call whose model holds less of it starts from it
(``base_enabled``). With cue words on (pipeline/tools/cues.py) the base is the
tools prompt read ahead, which every call's first cue turn starts from.

All methods run on the model's worker thread (``forget`` takes a lock: calls end
on the event loop).
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NO_CALL = ""
"""Requests outside any call (warm-up, probes): their context is never kept."""

TOOLS_CONTEXT = "\x1ftools"
"""Suffix of a call's second context, for its turns that list the tools."""

BASE_SLACK_TOKENS = 16
"""A model holding all of the base but its last few tokens (the read-ahead's
placeholder turn) is not worth a restore."""


@dataclass(frozen=True, slots=True)
class _Saved:
    tokens: np.ndarray
    state: bytes

    @property
    def size(self) -> int:
        return len(self.state) + self.tokens.nbytes


class CallContexts:
    """Per-call llama.cpp contexts, swapped in and out of one ``llama_cpp.Llama``."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        """0 turns the store off: every call starts from whatever the model holds."""
        self.enabled = max_bytes > 0
        self._saved: OrderedDict[str, _Saved] = OrderedDict()
        self._bytes = 0
        self._owner = NO_CALL
        """The call whose tokens the model holds now."""
        self._lock = threading.Lock()
        self.restored = 0
        """Contexts brought back (a call's turn after another call's)."""
        self.saved = 0
        self._base: _Saved | None = None
        self.base_enabled = True
        """True: a new call starts from the base (loadtest/llm_contexts.py measures it
        on and off)."""
        self.based = 0
        """New calls started from the base (the last read-ahead) rather than from
        what the model held."""

    @property
    def bytes_held(self) -> int:
        return self._bytes

    @property
    def has_base(self) -> bool:
        """A read-ahead is kept for the next new call."""
        return self._base is not None

    def take(self, model: Any, call: str) -> None:
        """Before ``call`` generates: park the current owner's context, bring back ``call``'s."""
        with self._lock:
            if call == self._owner:
                return
            previous, self._owner = self._owner, call
        if not self.enabled:
            return
        if previous != NO_CALL and model.n_tokens > 0:
            self._store(previous, _capture(model))
        with self._lock:
            saved = self._pop(call)
        if saved is not None:
            _restore(model, saved)
            self.restored += 1
        elif call != NO_CALL and (base := self._base_for(model)) is not None:
            _restore(model, base)
            self.based += 1

    def _base_for(self, model: Any) -> _Saved | None:
        """The base, if a new call would read less from it than from what the model holds."""
        base = self._base
        if not self.base_enabled or base is None:
            return None
        if _shared(model, base.tokens) >= len(base.tokens) - BASE_SLACK_TOKENS:
            return None
        return base

    def keep_base(self, model: Any) -> None:
        """The model has just read a call's instructions and tools ahead of its first
        turn: keep that for the next new call (worker thread)."""
        if self.enabled and self.base_enabled:
            self._base = _capture(model)

    def forget(self, call: str) -> None:
        """``call`` has ended: drop its context (thread-safe). If the model still holds
        it, it stays there (the next call shares its instructions) but is never parked."""
        with self._lock:
            self._pop(call)
            if self._owner == call:
                self._owner = NO_CALL

    def _pop(self, call: str) -> _Saved | None:
        """Remove ``call``'s saved context and its bytes (the lock held)."""
        saved = self._saved.pop(call, None)
        if saved is not None:
            self._bytes -= saved.size
        return saved

    def _store(self, call: str, saved: _Saved) -> None:
        with self._lock:
            if saved.size > self.max_bytes:
                return
            self._pop(call)
            self._saved[call] = saved
            self._bytes += saved.size
            self.saved += 1
            while self._bytes > self.max_bytes:
                _, dropped = self._saved.popitem(last=False)
                self._bytes -= dropped.size


def _capture(model: Any) -> _Saved:
    import llama_cpp

    ctx = model._ctx.ctx
    size = llama_cpp.llama_state_get_size(ctx)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_get_data(ctx, buffer, size)
    return _Saved(
        tokens=np.array(model.input_ids[: model.n_tokens], dtype=np.intc),
        state=ctypes.string_at(buffer, written),
    )


def _shared(model: Any, tokens: np.ndarray) -> int:
    """How many of ``tokens`` the model holds as the start of its context."""
    count = min(int(model.n_tokens), len(tokens))
    held = np.asarray(model.input_ids[:count], dtype=np.intc)
    differ = np.flatnonzero(held != tokens[:count])
    return int(differ[0]) if len(differ) else count


def _restore(model: Any, saved: _Saved) -> None:
    import llama_cpp

    size = len(saved.state)
    buffer = (ctypes.c_uint8 * size).from_buffer_copy(saved.state)
    if llama_cpp.llama_state_set_data(model._ctx.ctx, buffer, size) != size:
        model.reset()  # a state that does not load: start this call afresh
        return
    count = len(saved.tokens)
    model.input_ids[:count] = saved.tokens
    model.n_tokens = count
    # The restored logits are not a live decode: the library re-evaluates at least
    # the last prompt token before sampling.
    model._requires_eval = True


def context_key(
    session: str, tools: Sequence[dict[str, Any]], tool_choice: str, split: bool = False
) -> str:
    """Whose context a generation runs in.

    A call offered tools has its turns read in the template's prompt with the tools
    listed, but the answer after a tool call is asked in a different prompt (plain
    words, no tools: ``plain_messages``). Run in the call's own context, that answer
    would leave the plain prompt behind, and the call's next turn would re-read its
    tools block and whole history (~300 tokens: 1–2 s on two cores). So the answer
    runs outside the call (``NO_CALL``, never kept): the call's context is parked
    with its tool call in it and comes back for its next turn, which shares all of
    it up to the reply.

    With cues on (``split``), most of a call's turns are asked in the plain prompt
    and only those with a cue list the tools: each kind keeps a context of its own
    (``TOOLS_CONTEXT``), so neither makes the other re-read the call's history.
    """
    answer_round = bool(tools) and tool_choice == "none"
    if answer_round or session == NO_CALL:
        return NO_CALL
    return session + TOOLS_CONTEXT if split and tools else session
