"""Tool calls from a small in-process model: its own chat template, then a grammar.

The GGUF's chat template (Qwen2.5's, in the embedded default) knows how to show a
model its tools and how a model answers with a call: ``<tool_call>{"name": …,
"arguments": …}</tool_call>``, or, as the 0.5B model does, the bare JSON object.
A 0.5B model picks the right tool often but writes its arguments badly (it copies
the schema, invents fields). So generation runs in two steps:

1. free: the reply streams as speech until the model starts a call — it begins
   with ``{`` or a code fence, or it writes the ``<tool_call>`` token;
2. constrained: the call is written again from that point under a grammar built
   from the offered tools' schemas (llama.cpp's JSON-schema grammar), so the name is
   one of the tools and the arguments fit its schema by construction.

The second step costs a few dozen tokens of grammar-checked sampling, paid only by
replies that call a tool. One call per model turn.

Reading a result back is where the small model fails in its own template: shown
the call and the ``<tool_response>``, it writes the call again (as JSON, in a code
block) instead of answering, whatever tokens are banned. Told the result in plain
words at the end of its instructions, with no tools listed, it answers ("It is
10:42 PM on Sunday…"). So the answer is asked that way (``plain_messages``):
measured on a development set, docs/decisions.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.engines.base import ChatMessage
from pipeline.errors import LLMError
from pipeline.tools.spec import ToolCall

TOOL_CALL_TAG = "<tool_call>"
CALL_STARTS = ("{", "```", TOOL_CALL_TAG)
"""How a reply that is a call begins: the JSON object, the JSON in a code block (the
0.5B model does both), the template's tag. Speech never begins so."""
MAX_CALL_TOKENS = 256
MAX_KEPT_GRAMMARS = 16
CALL_TIME_BUDGET_S = 8.0
"""The most a call may take to write under its grammar after its first token. A call
to the built-in tools takes ~13 tokens: 0.5 s here, 3.4 s while other work loads both
cores; a legal but huge client schema can make each token cost 300 ms and a call run
to ``MAX_CALL_TOKENS`` (over a minute of the shared model, loadtest/grammar_cost.py).
Cut short, the call is answered as invalid."""
CALL_CONFIDENCE = 0.8
"""The model must put this much probability on opening a call, at its first token,
for the call to go ahead; below it the reply is words. At its own argmax the 0.5B
model opened calls for 5 of 12 development requests that needed none ("what's three
plus five", "is a tomato a fruit", "are you listening"); at 0.8, for 1 of 12, while
5 of the 8 that needed a tool still called it (docs/decisions.md; the development
set is not the benchmark's)."""


class TemplateTools:
    """Renders prompts with tools and writes calls under a grammar, for one model."""

    def __init__(
        self,
        model: Any,
        *,
        call_confidence: float = CALL_CONFIDENCE,
        call_time_budget_s: float = CALL_TIME_BUDGET_S,
    ) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = model.metadata.get("tokenizer.chat_template")
        if not template:
            raise LLMError("this GGUF has no chat template: it cannot be offered tools",
                           transient=False)
        eos = model.detokenize([model.token_eos()], special=True).decode("utf-8", "ignore")
        bos_id = model.token_bos()
        bos = (
            model.detokenize([bos_id], special=True).decode("utf-8", "ignore")
            if bos_id >= 0 else ""
        )
        self._model = model
        self._format = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        tag = model.tokenize(TOOL_CALL_TAG.encode(), add_bos=False, special=True)
        self.tag_token: int | None = tag[0] if len(tag) == 1 else None
        """The template's call-opening token, when the vocabulary has one."""
        self.call_confidence = call_confidence
        self.call_time_budget_s = call_time_budget_s
        starts = [
            (token, text) for token in range(model.n_vocab())
            if (text := model.detokenize([token], special=True).lstrip()).startswith(
                _OPENING_BYTES
            )
        ]
        self._call_openings = np.asarray([token for token, _ in starts], dtype=np.intp)
        """Every token a call can begin with (~190 in Qwen2.5's vocabulary; 0.3 s to find)."""
        self._sure_openings = np.asarray(
            [token for token, text in starts if _opens_a_call(text)], dtype=np.intp
        )
        """Those that open a call whatever follows (not a lone backtick before a word):
        the first token of a call the threshold decided on is one of them."""
        self._grammars: dict[str, Any] = {}
        """Call grammars by tool set, the least recently used first."""
        self.last_call_probability: float | None = None
        """What the last generation's first token gave a call's opening (the gate's
        input; ``loadtest.call_confidence`` calibrates thresholds on it)."""

    def prompt(self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]]) -> str:
        template_messages: Any = [_template_message(m) for m in messages]
        offered: Any = list(tools)
        rendered: str = self._format(messages=template_messages, tools=offered).prompt
        return rendered

    def stream(
        self,
        prompt: str,
        *,
        max_tokens: int,
        temperature: float,
        tools: Sequence[dict[str, Any]],
        stopped: Callable[[], bool],
    ) -> Generator[str | ToolCall, None, None]:
        """Text deltas until the model starts a call; then the call, written under the
        grammar. Runs on the model's worker thread."""
        from llama_cpp import LogitsProcessorList, StoppingCriteriaList

        tag_seen = False

        def at_tag(tokens: Any, logits: Any) -> bool:
            nonlocal tag_seen
            if self.tag_token is not None and int(tokens[-1]) == self.tag_token:
                tag_seen = True
            return tag_seen

        held = ""
        spoken = ""
        deciding = True
        chunks = self._model.create_completion(
            prompt, max_tokens=max_tokens, temperature=temperature, stream=True,
            stopping_criteria=StoppingCriteriaList([at_tag]),
            logits_processor=LogitsProcessorList([self.first_token_gate()]),
        )
        try:
            for chunk in chunks:
                if stopped():
                    return
                piece: str = chunk["choices"][0]["text"]
                if deciding:
                    held += piece
                    start = held.lstrip()
                    if start.startswith(CALL_STARTS):
                        break
                    if any(opening.startswith(start) for opening in CALL_STARTS):
                        continue  # blank, or the first characters of an opening
                    deciding, piece = False, held
                spoken += piece
                yield piece
        finally:
            chunks.close()
        called = tag_seen or (deciding and held.lstrip().startswith(CALL_STARTS))
        if not called or stopped():
            return
        prefix = f"{spoken}{TOOL_CALL_TAG}\n" if tag_seen else ""
        yield self._constrained_call(prompt + prefix, tools, temperature, stopped)

    def first_token_gate(self) -> Any:
        """A logits processor for one generation: at the first token, a call opens
        if and only if the model gives opening one at least ``call_confidence``.
        The threshold decides, not a sample: the 1.5B model gives "what time is it?"
        a call 0.26 (its scale, pipeline/tiers.py), and sampled at that it answered
        with a made-up time three times in four."""
        first = True
        openings = self._call_openings

        def gate(tokens: Any, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            nonlocal first
            if first:
                first = False
                self.last_call_probability = call_probability(scores, openings)
                if self.last_call_probability < self.call_confidence:
                    scores[openings] = -np.inf
                elif len(self._sure_openings):
                    sure = self._sure_openings
                    kept = scores[sure].copy()
                    scores[:] = -np.inf
                    scores[sure] = kept
            return scores

        return gate

    def call_grammar(self, tools: Sequence[dict[str, Any]]) -> Any:
        """The grammar a call to one of ``tools`` is written under, kept per tool set:
        a call's tools stay the same from turn to turn, and a large client schema's
        grammar is megabytes of text (loadtest/grammar_cost.py)."""
        from llama_cpp.llama_grammar import LlamaGrammar

        key = json.dumps(list(tools), sort_keys=True)
        grammar = self._grammars.pop(key, None)
        if grammar is None:
            schema = {"anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": tool["function"]["name"]},
                        "arguments": tool["function"].get("parameters") or {"type": "object"},
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for tool in tools
            ]}
            grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        self._grammars[key] = grammar  # the most recently used last
        while len(self._grammars) > MAX_KEPT_GRAMMARS:
            del self._grammars[next(iter(self._grammars))]
        return grammar

    def _constrained_call(
        self,
        prompt: str,
        tools: Sequence[dict[str, Any]],
        temperature: float,
        stopped: Callable[[], bool],
    ) -> ToolCall:
        from llama_cpp import StoppingCriteriaList

        started: list[float] = []

        def over(tokens: Any, logits: Any) -> bool:
            # Timed from the first token: the prompt before it is the reply's own.
            if not started:
                started.append(time.monotonic())
            return stopped() or time.monotonic() - started[0] > self.call_time_budget_s

        result = self._model.create_completion(
            prompt, max_tokens=MAX_CALL_TOKENS, temperature=temperature,
            grammar=self.call_grammar(tools), stopping_criteria=StoppingCriteriaList([over]),
        )
        text: str = result["choices"][0]["text"]
        try:
            call = json.loads(text)
            return ToolCall(str(call["name"]), json.dumps(call.get("arguments", {})))
        except (ValueError, KeyError, TypeError):
            # Cut short (MAX_CALL_TOKENS, the time budget): the executor answers it as invalid.
            name = next(
                (t["function"]["name"] for t in tools if f'"{t["function"]["name"]}"' in text),
                "unknown",
            )
            return ToolCall(name, text)


_OPENING_BYTES = tuple(opening.encode() for opening in ("{", "`", TOOL_CALL_TAG))


_CALL_START_BYTES = tuple(opening.encode() for opening in CALL_STARTS)


def _opens_a_call(text: bytes) -> bool:
    """A token's text (stripped) that ``TemplateTools.stream`` reads as a call's start,
    or as a start it waits on ("`", "``"): a decided call cannot become speech."""
    return text.startswith(_CALL_START_BYTES) or any(
        opening.startswith(text) for opening in _CALL_START_BYTES
    )


def call_probability(scores: npt.NDArray[np.float32], openings: npt.NDArray[np.intp]) -> float:
    """The probability the model gives to its next token opening a call."""
    logits = scores.astype(np.float64)
    weights = np.exp(logits - logits.max())
    return float(weights[openings].sum() / weights.sum())


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates print it: a call's arguments as an object."""
    out: dict[str, Any] = dict(message)
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _as_object(call)}}
            for call in calls
        ]
    return out


def _as_object(call: dict[str, Any]) -> Any:
    try:
        return json.loads(call["function"]["arguments"])
    except (ValueError, KeyError, TypeError):
        return {}


def last_user_index(messages: Sequence[ChatMessage]) -> int:
    """Where the caller's newest message is in ``messages``; -1 when there is none."""
    return max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)


def plain_messages(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """``messages`` for a model turn that answers in words: tool calls left out, the
    results of this turn's calls told in the instructions, older results dropped (the
    answer that followed them carries what the caller was told)."""
    last_user = last_user_index(messages)
    kept: list[ChatMessage] = []
    learned: list[str] = []
    for index, message in enumerate(messages):
        if message["role"] == "tool":
            if index > last_user:
                learned.append(message["content"])
            continue
        if message.get("tool_calls") and not message["content"]:
            continue
        kept.append(ChatMessage(role=message["role"], content=message["content"]))
    if learned and kept and kept[0]["role"] == "system":
        note = " ".join(learned)
        kept[0] = ChatMessage(
            role="system", content=f"{kept[0]['content']}\n\nWhat you know now: {note}"
        )
    return kept


def earlier_calls_dropped(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """``messages`` for a turn that may call a tool: the calls and results of earlier
    turns left out (the small model copies them), this turn's kept."""
    last_user = last_user_index(messages)
    return [
        m.copy() for i, m in enumerate(messages)
        if i > last_user or not (m["role"] == "tool" or (m.get("tool_calls") and not m["content"]))
    ]
