"""llama-cpp-python with the packaged Qwen2.5-Coder 0.5B GGUF."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.engines import llama_cpp as llama_cpp_engine
from pipeline.engines.base import (
    ChatMessage,
    LLMEngine,
    WarmableLLM,
    WordReadingLLM,
    YieldingLLM,
)
from pipeline.engines.llama_cpp import LlamaCppLLM
from pipeline.errors import LLMRequestError, ModelLoadError
from pipeline.models import ensure_fast_gguf
from pipeline.tools.spec import ToolCall

QUESTION: list[ChatMessage] = [
    {"role": "system", "content": "You are a voice assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
LONG_ANSWER: list[ChatMessage] = [
    {"role": "user", "content": "Count from one to two hundred in words, one per line."},
]


@pytest.fixture(scope="module")
def llm() -> Iterator[LlamaCppLLM]:
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None))
    yield engine
    engine.close()


async def test_streams_a_reply(llm: LlamaCppLLM) -> None:
    deltas = [d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)]
    assert len(deltas) > 1
    assert "paris" in "".join(deltas).lower()
    assert not llm.busy


async def test_cancel_after_two_deltas_stops_generation(
    llm: LlamaCppLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[str] = []
    two = asyncio.Event()
    # The model's own stream, counted, and held inside the third token until the
    # test lets it go: the cancel then lands while a token is in progress,
    # whatever the machine's speed.
    generate = llm._model.create_chat_completion
    pulled: list[object] = []
    hold = threading.Event()

    def held(*args: Any, **kwargs: Any) -> Iterator[Any]:
        tokens = 0
        for chunk in generate(*args, **kwargs):
            if chunk["choices"][0]["delta"].get("content"):
                tokens += 1
                if tokens > 2:
                    assert hold.wait(60), "never let go"
            pulled.append(chunk)
            yield chunk

    monkeypatch.setattr(llm._model, "create_chat_completion", held)

    async def consume() -> None:
        async for delta in llm.stream(LONG_ANSWER, max_tokens=400, temperature=0.0):
            received.append(delta)
            if len(received) == 2:
                two.set()

    task = asyncio.create_task(consume())
    await two.wait()
    assert llm.busy
    seen_before_cancel = len(received)
    task.cancel()
    # One loop turn: the cancelled stream runs its cleanup (tells the worker to
    # stop) before this test resumes; then the token in progress may finish.
    await asyncio.sleep(0)
    pulled_at_cancel = len(pulled)
    hold.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Cancellation returns only once the worker has stopped, after the token in
    # progress at most (none when the worker was still handing over the second
    # delta when the stop came): not one more is generated.
    assert not llm.busy
    assert len(pulled) <= pulled_at_cancel + 1, (len(pulled), pulled_at_cancel)
    assert len(received) == seen_before_cancel

    deltas = [d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)]
    assert "paris" in "".join(deltas).lower()


async def test_aclose_stops_generation(llm: LlamaCppLLM) -> None:
    stream = llm.stream(LONG_ANSWER, max_tokens=400, temperature=0.0)
    assert await anext(stream)
    assert await anext(stream)
    await stream.aclose()
    assert not llm.busy
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_consumer_that_stops_reading_does_not_run_away(
    llm: LlamaCppLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bounded queue stalls the worker; closing the stream then ends it."""
    generate = llm._model.create_chat_completion
    tokens: list[str] = []

    def counted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for chunk in generate(*args, **kwargs):
            if content := chunk["choices"][0]["delta"].get("content"):
                tokens.append(content)
            yield chunk

    monkeypatch.setattr(llm._model, "create_chat_completion", counted)
    stream = llm.stream(LONG_ANSWER, max_tokens=400, temperature=0.0)
    assert await anext(stream)
    # One read: the queue's 32 places, the one read, and the token the worker
    # then waits to hand over: 34 generated, however long that takes here.
    bound = 32 + 1 + 1
    for _ in range(1200):  # 120 s at most
        if len(tokens) >= bound:
            break
        await asyncio.sleep(0.1)
    assert llm.busy  # parked waiting for queue space, not finished
    await stream.aclose()
    assert not llm.busy
    assert len(tokens) == bound, len(tokens)


async def test_concurrent_streams_take_turns(llm: LlamaCppLLM) -> None:
    async def answer() -> str:
        return "".join([d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)])

    first, second = await asyncio.gather(answer(), answer())
    assert first == second
    assert "paris" in first.lower()


async def test_prompt_longer_than_context_is_the_callers_error(llm: LlamaCppLLM) -> None:
    huge: list[ChatMessage] = [{"role": "user", "content": "word " * 6000}]
    with pytest.raises(LLMRequestError, match="do not fit the model's context") as caught:
        async for _ in llm.stream(huge, max_tokens=8, temperature=0.0):
            pass
    assert caught.value.category == "client"
    assert not llm.busy


def _prompt_tokens_evaluated(llm: LlamaCppLLM) -> int:
    """llama.cpp's own count of prompt tokens decoded (prefill), from its perf hooks."""
    import llama_cpp

    return int(llama_cpp.llama_perf_context(llm._model._ctx.ctx).n_p_eval)


async def test_a_stream_closed_while_it_waits_never_runs(llm: LlamaCppLLM) -> None:
    """Issue 13: a cancelled job (a discarded draft) still ran its whole prefill
    ahead of the real reply."""
    blocker = llm.stream(LONG_ANSWER, max_tokens=400, temperature=0.0)
    assert await anext(blocker)  # the model is busy with it (its prefill is done)
    started = llm.generations_started if hasattr(llm, "generations_started") else None
    before = _prompt_tokens_evaluated(llm)
    # A long prompt that shares nothing with the blocker's: hundreds of tokens to prefill.
    draft: list[ChatMessage] = [
        {"role": "system", "content": "Answer as a pirate would. " * 40},
        {"role": "user", "content": "Tell me a long story about a dragon."},
    ]
    waiting = asyncio.ensure_future(anext(llm.stream(draft, max_tokens=400, temperature=0.0)))
    await asyncio.sleep(0)  # the stream has queued its job behind the blocker
    waiting.cancel()
    await blocker.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # The model is free at once; the next request proves the worker's queue is empty.
    deltas = [d async for d in llm.stream(QUESTION, max_tokens=8, temperature=0.0)]
    assert deltas
    question_tokens = len(llm._model.tokenize(QUESTION[0]["content"].encode())) + len(
        llm._model.tokenize(QUESTION[1]["content"].encode())
    )
    evaluated = _prompt_tokens_evaluated(llm) - before
    assert evaluated <= question_tokens + 32, f"{evaluated} prompt tokens: the draft ran"
    assert llm.generations_started == (started or 0) + 1


async def test_calls_take_turns_on_the_shared_model(llm: LlamaCppLLM) -> None:
    """One call's backlog does not go ahead of another call's request."""
    blocker = llm.stream(LONG_ANSWER, max_tokens=400, temperature=0.0)
    assert await anext(blocker)
    first, second = llm.for_session("call-a"), llm.for_session("call-b")
    finished: list[str] = []

    async def ask(engine: LLMEngine, name: str) -> None:
        async for _ in engine.stream(QUESTION, max_tokens=2, temperature=0.0):
            pass
        finished.append(name)

    tasks = [
        asyncio.create_task(ask(first, "a1")),
        asyncio.create_task(ask(first, "a2")),
        asyncio.create_task(ask(first, "a3")),
        asyncio.create_task(ask(second, "b1")),
    ]
    await asyncio.sleep(0)  # all four have queued behind the blocker, in that order
    await blocker.aclose()
    await asyncio.gather(*tasks)
    assert finished == ["a1", "b1", "a2", "a3"]


def test_fitting_keeps_the_instructions_and_the_newest_turns(llm: LlamaCppLLM) -> None:
    system: ChatMessage = {"role": "system", "content": "You are a voice assistant."}
    turns: list[ChatMessage] = []
    for index in range(40):
        turns.append({"role": "user", "content": f"Question {index}: " + "tell me more " * 30})
        turns.append({"role": "assistant", "content": f"Answer {index}: " + "here is more " * 30})
    newest: ChatMessage = {"role": "user", "content": "And what is the capital of France?"}
    messages = [system, *turns, newest]
    fitted = llm.fit(messages, max_tokens=256)
    assert fitted[0] == system and fitted[-1] == newest
    assert fitted[1]["role"] == "user"
    assert fitted[1:] == messages[len(messages) - len(fitted) + 1 :]
    assert 3 < len(fitted) < len(messages)
    prompt = sum(len(llm._model.tokenize(m["content"].encode())) + 8 for m in fitted)
    assert prompt <= llm.n_ctx - 256


async def test_instructions_over_the_token_limit_are_the_callers_error(llm: LlamaCppLLM) -> None:
    # Digits are one token each: 8000 characters of them overflow a 4096-token context.
    digits: list[ChatMessage] = [
        {"role": "system", "content": "1234567890" * 800},
        {"role": "user", "content": "Hello."},
    ]
    with pytest.raises(LLMRequestError, match="instructions take") as caught:
        async for _ in llm.stream(digits, max_tokens=150, temperature=0.0):
            pass
    assert caught.value.category == "client"
    assert not llm.busy
    deltas = [d async for d in llm.stream(QUESTION, max_tokens=48, temperature=0.0)]
    assert "paris" in "".join(deltas).lower()


def test_missing_model_file() -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        LlamaCppLLM("/nonexistent/model.gguf")


def test_satisfies_the_seam(llm: LlamaCppLLM) -> None:
    engine: LLMEngine = llm  # checked by mypy
    assert engine.name == "llama.cpp:qwen2.5-coder-0.5b-instruct"


async def _turn(view: LLMEngine, history: list[ChatMessage], question: str) -> None:
    history.append({"role": "user", "content": question})
    deltas = [d async for d in view.stream(history, max_tokens=12, temperature=0.0)]
    history.append({"role": "assistant", "content": "".join(deltas)})


async def test_a_call_keeps_its_context_while_another_call_uses_the_model() -> None:
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=1024)
    system = "You are a voice assistant. " * 20 + "Answer in one short sentence."
    try:
        calls = {name: engine.for_session(name) for name in ("a", "b")}
        histories: dict[str, list[ChatMessage]] = {
            name: [{"role": "system", "content": f"Call {name}. {system}"}] for name in calls
        }
        await _turn(calls["a"], histories["a"], "What is the capital of France?")
        first_prompt = engine.last_prompt_tokens
        await _turn(calls["b"], histories["b"], "What do bees make?")
        await _turn(calls["a"], histories["a"], "And of Spain?")
        # A's second turn re-read only its new words, not its system prompt and history.
        assert engine.contexts.restored == 1
        assert engine.last_prompt_tokens < first_prompt / 3
        assert "madrid" in histories["a"][-1]["content"].lower()

        # The same turn with the store off re-reads the whole prompt after B's turn.
        engine.contexts.enabled = False
        await _turn(calls["b"], histories["b"], "And cows?")
        await _turn(calls["a"], histories["a"], "And of Italy?")
        assert engine.last_prompt_tokens > first_prompt
        engine.contexts.enabled = True

        # A call that ends leaves nothing behind.
        await _turn(calls["b"], histories["b"], "And cats?")
        assert engine.contexts.bytes_held > 0  # A's context, parked for B's turn
        calls["a"].release()  # type: ignore[attr-defined]
        assert engine.contexts.bytes_held == 0
    finally:
        engine.close()


def test_the_context_store_keeps_within_its_bytes() -> None:
    from pipeline.engines.llama_contexts import CallContexts, _Saved

    store = CallContexts(max_bytes=10_000)
    for name in "abc":
        store._store(name, _Saved(tokens=np.zeros(100, dtype=np.intc), state=b"x" * 4000))
    assert store.bytes_held <= 10_000
    assert list(store._saved) == ["b", "c"]  # the least recently parked went first
    store._store("big", _Saved(tokens=np.zeros(1, dtype=np.intc), state=b"x" * 20_000))
    assert "big" not in store._saved


async def test_new_instructions_are_read_before_the_first_reply() -> None:
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=1024)
    instructions = "You are the booking line of a dental clinic. " * 15 + "Be brief."
    try:
        view = engine.for_session("a")
        assert isinstance(view, WarmableLLM)
        view.warm(instructions)
        await engine.until_idle(60)
        assert engine.warm_ups == 1
        history: list[ChatMessage] = [{"role": "system", "content": instructions}]
        await _turn(view, history, "Can I book a cleaning?")
        # The reply read only the caller's words: the instructions were in context.
        assert engine.last_prompt_tokens < 30

        # A warm-up still waiting when its call ends never runs: queued while
        # another call's reply holds the model, withdrawn by the end of the call.
        other = engine.for_session("b")
        reply = other.stream(
            [{"role": "user", "content": "Count to fifty in words."}],
            max_tokens=64,
            temperature=0.0,
        )
        async for _ in reply:  # the first delta: the model is busy with B
            view.warm(instructions + " Be kind.")
            view.release()  # type: ignore[attr-defined]
            break
        await reply.aclose()
        await engine.until_idle(60)
        assert engine.warm_ups == 1
    finally:
        engine.close()


async def test_a_paused_generation_waits_for_its_resume_and_still_cancels_at_once(
    llm: LlamaCppLLM,
) -> None:
    view = llm.for_session("speaking")
    assert isinstance(view, YieldingLLM)
    stream = view.stream(LONG_ANSWER, max_tokens=40, temperature=0.0)
    received = [await anext(stream)]
    pauses = llm.pauses
    view.pause_generation()
    # The worker stops at its next token boundary; what it made before still arrives.
    for _ in range(400):  # 40 s at most
        if llm.pauses > pauses:
            break
        received.append(await asyncio.wait_for(anext(stream), 5))
    assert llm.pauses == pauses + 1
    view.resume_generation()
    received += [delta async for delta in stream]
    assert len(received) > 10 and not llm.busy

    # Closed while paused: it ends within a poll of the gate, not at the pause's end.
    stream = view.stream(LONG_ANSWER, max_tokens=40, temperature=0.0)
    await anext(stream)
    view.pause_generation()
    for _ in range(400):
        if llm.pauses > pauses + 1:
            break
        await asyncio.wait_for(anext(stream), 5)
    await stream.aclose()  # type: ignore[attr-defined]
    assert not llm.busy
    view.release()  # type: ignore[attr-defined]


async def test_a_pause_nobody_resumes_ends_by_itself(
    llm: LlamaCppLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llama_cpp_engine, "MAX_PAUSE_S", 0.2)
    view = llm.for_session("forgotten")
    assert isinstance(view, YieldingLLM)
    pauses = llm.pauses
    stream = view.stream(QUESTION, max_tokens=24, temperature=0.0)
    first = await anext(stream)
    view.pause_generation()
    rest = [delta async for delta in stream]
    assert llm.pauses == pauses + 1  # it did stop, and went on alone
    assert "paris" in (first + "".join(rest)).lower()


async def test_a_calls_next_turn_after_a_tool_answer_reads_only_its_new_words() -> None:
    """The answer after a tool call is asked in another prompt (plain words, no
    tools): it must not leave that prompt in the call's context, or the call's next
    turn re-reads the tools block and its whole history (the tools-on p95 of
    docs/benchmarks.md)."""
    from pipeline.session import DEFAULT_INSTRUCTIONS
    from pipeline.tools.builtin import builtin_tools

    # Cues off: every turn lists the tools (with cues on, this turn would be plain).
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=2048, tool_cues=False)
    tools: Any = [t.spec.openai() for t in builtin_tools(["get_current_time", "end_call"])]
    history: list[ChatMessage] = [{"role": "system", "content": DEFAULT_INSTRUCTIONS}]

    async def turn(question: str, choice: str = "auto") -> str:
        if choice == "auto":
            history.append({"role": "user", "content": question})
        items = [
            item async for item in engine.stream_with_tools(
                history, tools=tools, max_tokens=12, temperature=0.0, session="a",
                tool_choice=choice,
            )
        ]
        return "".join(item for item in items if isinstance(item, str))

    try:
        reply = await turn("What is the capital of France?")
        history.append({"role": "assistant", "content": reply})
        first_prompt = engine.last_prompt_tokens
        assert first_prompt > 200  # the instructions and the tools block
        # The same turn's answer round (what follows a tool call): no tools offered.
        await turn("", choice="none")
        history.append({"role": "assistant", "content": await turn("And of Spain?")})
        assert engine.last_prompt_tokens < 40, engine.last_prompt_tokens
        assert "madrid" in history[-1]["content"].lower()
    finally:
        engine.close()


async def test_a_new_call_after_a_tool_answer_starts_from_the_read_ahead() -> None:
    """A tool answer (plain prompt, outside any call) leaves the model holding no
    instructions or tools: the next new call starts from the last read-ahead instead
    of re-reading ~250 tokens before its first reply."""
    from pipeline.session import DEFAULT_INSTRUCTIONS
    from pipeline.tools.builtin import builtin_tools

    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=2048, tool_cues=False)
    tools: Any = [t.spec.openai() for t in builtin_tools(["get_current_time", "end_call"])]
    system: ChatMessage = {"role": "system", "content": DEFAULT_INSTRUCTIONS}

    async def first_turn(session: str, question: str, choice: str = "auto") -> None:
        history: list[ChatMessage] = [system, {"role": "user", "content": question}]
        async for _ in engine.stream_with_tools(
            history, tools=tools, max_tokens=8, temperature=0.0, session=session,
            tool_choice=choice,
        ):
            pass

    async def read_ahead(session: str) -> int:
        engine.for_session(session).warm(DEFAULT_INSTRUCTIONS, tools)  # type: ignore[attr-defined]
        await engine.until_idle(120)
        return engine.last_prompt_tokens

    try:
        reads = {}
        for session in ("a", "b", "c"):
            reads[session] = await read_ahead(session)
            await first_turn(session, "What is the capital of France?")
            assert engine.last_prompt_tokens < 40  # the caller's words only
            await first_turn(session, "", choice="none")  # a tool answer: plain prompt
        # A read its instructions and tools; B and C started from A's read-ahead,
        # not from the plain prompt the tool answers left in the model.
        assert reads["a"] > 200 and reads["b"] < 20 and reads["c"] < 20, reads
        assert engine.contexts.based == 2
        engine.contexts.enabled = False  # off: the read-ahead re-reads it all
        assert await read_ahead("d") > 200
        assert engine.contexts.based == 2
    finally:
        engine.close()


async def test_with_cues_plain_turns_and_tool_turns_keep_contexts_of_their_own() -> None:
    """Cues on (the default): a turn without a cue is asked in the plain prompt; one
    with a cue is asked whether it calls in the tools prompt with that turn alone (with
    the history in it the 0.5B model makes up a time instead of calling: checked
    below with cues off); each kind keeps its own context, so alternating never
    re-reads the call's history."""
    from pipeline.session import DEFAULT_INSTRUCTIONS
    from pipeline.tools.builtin import builtin_tools

    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=2048)
    tools: Any = [t.spec.openai() for t in builtin_tools(["get_current_time", "end_call"])]
    history: list[ChatMessage] = [{"role": "system", "content": DEFAULT_INSTRUCTIONS}]

    async def turn(question: str) -> tuple[str, list[ToolCall]]:
        history.append({"role": "user", "content": question})
        items = [
            item async for item in engine.stream_with_tools(
                history, tools=tools, max_tokens=12, temperature=0.0, session="a",
            )
        ]
        text = "".join(item for item in items if isinstance(item, str))
        history.append({"role": "assistant", "content": text})
        return text, [item for item in items if isinstance(item, ToolCall)]

    try:
        engine.for_session("a").warm(DEFAULT_INSTRUCTIONS, tools)  # type: ignore[attr-defined]
        await engine.until_idle(120)
        assert engine.last_prompt_tokens < 120  # the instructions, not the tools block
        text, calls = await turn("What is the capital of France?")
        assert calls == [] and "paris" in text.lower()
        assert engine.last_prompt_tokens < 40 and engine.calls_ruled_out == 1
        _, calls = await turn("What time is it?")  # a cue: the tools are listed
        assert [c.name for c in calls] == ["get_current_time"]
        # The tools prompt was read ahead in the call's tools context: this turn only.
        assert engine.last_prompt_tokens < 40 and engine.calls_ruled_out == 1
        history.pop()  # the call's turn is not the plain history's
        text, _ = await turn("And what is the capital of Spain?")
        assert "madrid" in text.lower()
        assert engine.last_prompt_tokens < 60, engine.last_prompt_tokens
        _, calls = await turn("Thanks, goodbye.")
        assert [c.name for c in calls] == ["end_call"]
        assert engine.last_prompt_tokens < 40, engine.last_prompt_tokens  # this turn only
        history.pop()
        _, calls = await turn("Can you tell me the time?")  # the plain turns did not matter
        assert [c.name for c in calls] == ["get_current_time"]
        history.pop()
        await turn("And of Italy?")  # the model holds the plain prompt again
        # A second call reads its tools prompt from the first call's (the base).
        based = engine.contexts.based
        engine.for_session("b").warm(DEFAULT_INSTRUCTIONS, tools)  # type: ignore[attr-defined]
        await engine.until_idle(120)
        assert engine.contexts.based == based + 1
    finally:
        engine.release("a")
        engine.close()
    # The same history with cues off: the tools prompt holds the history, and the
    # model answers with a made-up time instead of calling.
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=2048, tool_cues=False)
    try:
        del history[3:]  # the instructions, France and its answer, "What time is it?"
        items = [
            item async for item in engine.stream_with_tools(
                history, tools=tools, max_tokens=12, temperature=0.0, session="b",
            )
        ]
        assert not any(isinstance(item, ToolCall) for item in items), items
    finally:
        engine.close()


async def test_a_call_that_ended_holding_the_model_is_not_parked() -> None:
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=1024)
    try:
        first = engine.for_session("a")
        await _turn(first, [{"role": "system", "content": "Be brief."}], "Hello?")
        first.release()  # type: ignore[attr-defined]
        second = engine.for_session("b")
        history: list[ChatMessage] = [{"role": "system", "content": "Be brief."}]
        await _turn(second, history, "Hi there?")
        # B shared A's instructions from the model, and A's ended context was not kept.
        assert engine.contexts.bytes_held == 0
        assert engine.contexts.saved == 0
    finally:
        engine.close()


def test_the_load_reads_a_new_calls_prompt_ahead_so_the_first_call_starts_from_it() -> None:
    """The server's load reads the default instructions with the built-in tools (the
    base every new call starts from) before any caller: the first call's read-ahead
    then starts from it, as every later call's does, instead of reading it all while
    the caller's first question waits (7 s on the 1.5B model)."""
    from agent.config import Settings
    from agent.profiles import _read_ahead, build_tools
    from pipeline.session import DEFAULT_INSTRUCTIONS, Engines
    from pipeline.tools.registry import ToolContext

    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=2048)
    try:
        tools = build_tools(Settings())
        assert len(tools) and engine.tool_cues
        engines = Engines(stt=None, llm=engine, tts=None, vad=None, tools=tools)  # type: ignore[arg-type]
        lines: list[str] = []
        assert not engine.contexts.has_base
        _read_ahead(engines, lines.append)
        assert engine.contexts.has_base
        assert lines[-1].startswith("loaded LLM read-ahead") and "kept for new calls" in lines[-1]
        assert engine.contexts.based == 0
        offered = [each.spec.openai() for each in tools.offered(ToolContext("x", "UTC"))]
        engine.for_session("first").warm(DEFAULT_INSTRUCTIONS, offered)  # type: ignore[attr-defined]
        asyncio.run(engine.until_idle(120))
        assert engine.contexts.based == 1  # the first call's tools prompt: from the base
        assert engine.last_prompt_tokens < 40, engine.last_prompt_tokens  # then the plain one
        engine.release("first")
    finally:
        engine.close()
    # An engine without tools to read (VOICEFORGE_TOOLS=none) reads nothing more.
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=1024)
    try:
        lines = []
        none = Engines(stt=None, llm=engine, tts=None, vad=None)  # type: ignore[arg-type]
        _read_ahead(none, lines.append)
        assert lines == [] and not engine.contexts.has_base
    finally:
        engine.close()


async def test_the_callers_words_read_ahead_leave_the_reply_only_the_last_ones() -> None:
    """The same second turn in two calls: the one whose words so far were read while
    the caller spoke reads fewer tokens for its reply; a read cannot be queued while
    the model is busy."""
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=1024)
    system = "You are a voice assistant. Answer in one short sentence."
    question = "Could you please tell me which city is the capital of France?"
    partial = "Could you please tell me which city is the"
    try:
        read: dict[str, int] = {}
        for name, reads in (("plain", False), ("read", True)):
            view = engine.for_session(name)
            assert isinstance(view, WordReadingLLM)
            history: list[ChatMessage] = [{"role": "system", "content": system}]
            await _turn(view, history, "Hello there.")
            if reads:
                assert view.idle
                assert view.read_words([*history, {"role": "user", "content": partial}])
                await engine.until_idle(60)
                assert engine.words_read == 1
            await _turn(view, history, question)
            read[name] = engine.last_prompt_tokens
        assert read["read"] <= read["plain"] - 8, read

        view = engine.for_session("busy")
        assert isinstance(view, WordReadingLLM)
        reply = view.stream(LONG_ANSWER, max_tokens=64, temperature=0.0)
        async for _ in reply:  # the first delta: the model is busy with this call
            assert not view.idle
            assert not view.read_words([{"role": "user", "content": partial}])
            break
        await reply.aclose()
        assert engine.words_read == 1
    finally:
        engine.close()
