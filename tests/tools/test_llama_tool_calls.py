"""The embedded model calls tools: its GGUF template lists them, a grammar writes the call,
and the answer is asked for in plain words (pipeline/engines/llama_tools.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.engines.base import ChatMessage
from pipeline.engines.llama_cpp import LlamaCppLLM
from pipeline.engines.llama_tools import (
    CALL_CONFIDENCE,
    call_probability,
    earlier_calls_dropped,
    plain_messages,
)
from pipeline.models import ensure_fast_gguf
from pipeline.session import DEFAULT_INSTRUCTIONS
from pipeline.tools import ToolCall, ToolSpec, server_tool
from pipeline.tools.builtin import builtin_tools

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("error")]


async def lookup_order(order_id: str, rush: bool = False) -> str:
    """Where a caller's order is. Use it when the caller asks about an order."""
    return f"order {order_id}"


BUILTIN = [t.spec for t in builtin_tools(["get_current_time", "end_call"])]
ORDER: ToolSpec = server_tool(lookup_order).spec


@pytest.fixture(scope="module")
def llm() -> Iterator[LlamaCppLLM]:
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=2048)
    yield engine
    engine.close()


async def _turn(
    llm: LlamaCppLLM, said: str, specs: list[ToolSpec], choice: str = "auto",
    extra: list[ChatMessage] | None = None,
) -> tuple[str, list[ToolCall]]:
    messages: list[ChatMessage] = [
        {"role": "system", "content": DEFAULT_INSTRUCTIONS},
        {"role": "user", "content": said},
        *(extra or []),
    ]
    text, calls = "", []
    tools: Any = [spec.openai() for spec in specs]
    async for item in llm.stream_with_tools(
        messages, tools=tools, max_tokens=48, temperature=0.0, tool_choice=choice
    ):
        if isinstance(item, ToolCall):
            calls.append(item)
        else:
            text += item
    return text, calls


async def test_a_time_question_calls_the_clock_and_a_goodbye_ends_the_call(
    llm: LlamaCppLLM,
) -> None:
    text, calls = await _turn(llm, "What time is it?", BUILTIN)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_current_time", {})]
    assert text == ""  # the call is not spoken
    _, calls = await _turn(llm, "Goodbye, that's all.", BUILTIN)
    assert [c.name for c in calls] == ["end_call"]


async def test_a_question_no_tool_answers_is_answered_in_words(llm: LlamaCppLLM) -> None:
    text, calls = await _turn(llm, "What is the capital of France?", BUILTIN)
    assert calls == [] and "paris" in text.lower()


async def test_arguments_written_under_the_grammar_fit_the_schema(llm: LlamaCppLLM) -> None:
    _, calls = await _turn(llm, "Where is my order A 7 7 3?", [ORDER, *BUILTIN])
    assert [c.name for c in calls] == ["lookup_order"]
    arguments = ORDER.parse_arguments(calls[0].arguments)  # raises if it does not fit
    assert set(arguments) <= {"order_id", "rush"} and isinstance(arguments["order_id"], str)


async def test_the_answer_reads_the_result_and_speaks_it(llm: LlamaCppLLM) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_current_time", "arguments": "{}"}}
    exchange: list[ChatMessage] = [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "It is 10:42 PM on Sunday, November 29, 2026 (UTC time).",
         "tool_call_id": "call_1"},
    ]
    text, calls = await _turn(llm, "What time is it?", BUILTIN, "none", exchange)
    assert calls == [] and "10:42" in text and "{" not in text


def test_the_small_models_prompts_keep_calls_out_of_its_way() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{}"}}
    messages: list[ChatMessage] = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "old result", "tool_call_id": "c1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "new result", "tool_call_id": "c1"},
    ]
    assert plain_messages(messages) == [
        {"role": "system", "content": "S\n\nWhat you know now: new result"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    assert [m.get("tool_calls") is not None or m["role"] == "tool"
            for m in earlier_calls_dropped(messages)] == [False, False, False, False, True, True]


def test_a_call_opens_only_when_the_model_is_confident_enough(llm: LlamaCppLLM) -> None:
    tools = llm.template_tools()
    openings = tools._call_openings
    assert len(openings) > 10  # "{", "{\"", "```json", … in Qwen2.5's vocabulary
    vocab = llm._model.n_vocab()
    others = np.setdiff1d(np.arange(vocab), openings)
    scores = np.zeros(vocab, dtype=np.float32)
    # Nine tenths of the probability on opening a call.
    scores[openings] = np.log(9.0 * len(others) / len(openings))
    assert call_probability(scores, openings) == pytest.approx(0.9, abs=1e-4)
    sure = tools._sure_openings
    assert 0 < len(sure) < len(openings)  # "`the" opens no call; "```" and "{" do
    for threshold, called in ((0.85, True), (0.95, False)):
        tools.call_confidence = threshold
        gate = tools.first_token_gate()
        gated = gate(None, scores.copy())
        assert tools.last_call_probability == pytest.approx(0.9, abs=1e-4)
        if called:  # the threshold decides: only a sure opening may come next
            assert np.isfinite(gated[sure]).all()
            assert not np.isfinite(np.delete(gated, sure)).any()
        else:
            assert not np.isfinite(gated[openings]).any() and np.isfinite(gated[others]).all()
        second = gate(None, scores.copy())  # only the first token is judged
        assert np.isfinite(second).all()
    tools.call_confidence = CALL_CONFIDENCE
    for token in sure:
        text = llm._model.detokenize([int(token)], special=True).decode("utf-8", "ignore")
        assert text.lstrip().startswith(("{", "`", "<tool_call>"))


def test_call_grammars_are_kept_per_tool_set_within_a_bound(llm: LlamaCppLLM) -> None:
    from pipeline.engines.llama_tools import MAX_KEPT_GRAMMARS

    writer = llm.template_tools()
    tools: Any = [spec.openai() for spec in BUILTIN]
    first = writer.call_grammar(tools)
    assert writer.call_grammar([dict(tool) for tool in tools]) is first  # built once
    for number in range(MAX_KEPT_GRAMMARS):
        other: Any = [{"type": "function", "function": {
            "name": f"tool_{number}", "parameters": {"type": "object", "properties": {}}}}]
        assert writer.call_grammar(other) is not first
    assert len(writer._grammars) == MAX_KEPT_GRAMMARS
    assert writer.call_grammar(tools) is not first  # the least recently used went first


def test_a_call_under_a_huge_legal_schema_is_cut_by_its_time_budget_and_by_a_stop(
    llm: LlamaCppLLM,
) -> None:
    """A client's legal schema can make each grammar-checked token cost hundreds of
    milliseconds (loadtest/grammar_cost.py): the call stops at its time budget, or at
    once when the reply is stopped, and is answered as invalid."""
    from pipeline.engines.llama_tools import TemplateTools

    strings = {"type": "string", "minLength": 256, "maxLength": 256}
    huge: Any = [{"type": "function", "function": {"name": "fill", "parameters": {
        "type": "object",
        "properties": {"rows": {"type": "array", "items": strings, "minItems": 256}},
        "required": ["rows"],
    }}}]
    messages: list[ChatMessage] = [{"role": "system", "content": DEFAULT_INSTRUCTIONS},
                                   {"role": "user", "content": "Fill the rows."}]
    prompt = llm.template_tools().prompt(messages, huge)
    budgeted = TemplateTools(llm._model, call_time_budget_s=0.0)
    cut = budgeted._constrained_call(prompt, huge, 0.0, stopped=lambda: False)
    stopped = llm.template_tools()._constrained_call(prompt, huge, 0.0, stopped=lambda: True)
    for call in (cut, stopped):
        assert call.name == "unknown"  # not even the name was written
        with pytest.raises(ValueError):
            json.loads(call.arguments)
