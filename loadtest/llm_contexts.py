"""Calls that take turns on the embedded model, with each call's context kept or not.

``python -m loadtest.llm_contexts`` runs N simulated calls on one ``LlamaCppLLM``:
round after round, every call in turn asks its next question with its whole history
(as a voice call's turns do, one call's turn between another's). Rounds alternate
the per-call context store on and off (interleaved, so both sides see the same
machine and the same history lengths), and report per side the first-token time
and the prompt tokens the model had to read.

A second part measures the first reply of calls that set their own instructions
(as every deployed agent does): alternately with the instructions read ahead
(``warm``, as ``Conversation.update`` does while the caller is still speaking)
and without, each call's instructions new to the model.

A third part measures a new call with the default instructions and the built-in
tools after a tool answer (the plain-words prompt that follows a tool call, run
outside any call), alternately starting from the last read-ahead (the base) and
from what the model holds: the read-ahead's time and the tokens it read. That
part runs with cue words off (read-aheads list the tools); with them on (the
default) a read-ahead reads the tools prompt in the call's tools context (from the
base) and then the plain prompt, which the tool answer shares: ``with_cues``
reports its time and the plain prompt's tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.latency import percentile
from pipeline.engines.base import ChatMessage, LLMEngine
from pipeline.engines.llama_cpp import LlamaCppLLM
from pipeline.models import ensure_fast_gguf
from pipeline.session import DEFAULT_INSTRUCTIONS

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What do bees make?",
    "Which season comes after winter?",
    "What is two plus three?",
    "Who wrote Romeo and Juliet?",
    "What is frozen water called?",
    "How many days are there in a week?",
    "What colour is the sky on a clear day?",
    "What is the largest planet in our solar system?",
]


async def _turn(
    view: LLMEngine, history: list[ChatMessage], question: str, max_tokens: int
) -> float:
    history.append({"role": "user", "content": question})
    started = time.perf_counter()
    first: float | None = None
    reply = ""
    async for delta in view.stream(history, max_tokens=max_tokens, temperature=0.0):
        if first is None:
            first = time.perf_counter() - started
        reply += delta
    history.append({"role": "assistant", "content": reply})
    return (first if first is not None else time.perf_counter() - started) * 1000.0


async def run(calls: int, rounds: int, max_tokens: int) -> dict[str, Any]:
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None))
    try:
        views = [engine.for_session(f"call-{index}") for index in range(calls)]
        histories: list[list[ChatMessage]] = [
            [{"role": "system", "content": DEFAULT_INSTRUCTIONS}] for _ in range(calls)
        ]
        sides: dict[str, dict[str, list[float]]] = {
            side: {"first_token_ms": [], "prompt_tokens": []} for side in ("on", "off")
        }
        for round_index in range(rounds):
            side = "on" if round_index % 2 == 0 else "off"
            engine.contexts.enabled = side == "on"
            for index, view in enumerate(views):
                question = QUESTIONS[(round_index + index) % len(QUESTIONS)]
                first_ms = await _turn(view, histories[index], question, max_tokens)
                if round_index > 0:  # the first round reads every prompt whole either way
                    sides[side]["first_token_ms"].append(first_ms)
                    sides[side]["prompt_tokens"].append(float(engine.last_prompt_tokens))
            print(
                f"round {round_index + 1}/{rounds} ({side}): first token "
                f"{statistics.median(sides[side]['first_token_ms'] or [0.0]):.0f} ms median so far",
                file=sys.stderr,
                flush=True,
            )
        report: dict[str, Any] = {"calls": calls, "rounds": rounds, "max_tokens": max_tokens}
        for side, values in sides.items():
            report[side] = {
                name: {
                    "p50": round(percentile(series, 50), 1),
                    "p95": round(percentile(series, 95), 1),
                    "n": len(series),
                }
                for name, series in values.items()
            }
        report["ratio_on_off_first_token"] = {
            q: round(report["on"]["first_token_ms"][q] / report["off"]["first_token_ms"][q], 2)
            for q in ("p50", "p95")
        }
        report["contexts_restored"] = engine.contexts.restored
        report["instructions_read_ahead"] = await _first_replies(engine, rounds)
        report["new_call_after_tool_answer"] = await _after_tool_answers(engine, rounds)
        return report
    finally:
        engine.close()


INSTRUCTIONS = (
    "You are the phone assistant of {name}, a family-run bakery in Lyon. Greet callers "
    "warmly, answer questions about opening hours (Tuesday to Sunday, seven to one), "
    "the daily bread, cakes to order two days ahead, and directions from the station. "
    "Never invent prices; offer to take a message instead. Keep every answer to one "
    "or two short spoken sentences, with no lists and no symbols."
)
BAKERIES = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand"]


async def _first_replies(engine: LlamaCppLLM, rounds: int) -> dict[str, Any]:
    sides: dict[str, list[float]] = {"on": [], "off": []}
    tokens: dict[str, list[float]] = {"on": [], "off": []}
    for index in range(rounds * 2):
        side = "on" if index % 2 == 0 else "off"
        view = engine.for_session(f"first-{index}")
        instructions = INSTRUCTIONS.format(name=BAKERIES[index % len(BAKERIES)] + f" {index}")
        if side == "on":
            engine.warm(instructions, f"first-{index}")
            await engine.until_idle(120)  # the caller is still saying their first sentence
        history: list[ChatMessage] = [{"role": "system", "content": instructions}]
        sides[side].append(await _turn(view, history, "Are you open on Monday?", 16))
        tokens[side].append(float(engine.last_prompt_tokens))
        engine.release(f"first-{index}")
        print(f"first reply {index + 1}/{rounds * 2} ({side}): first token "
              f"{sides[side][-1]:.0f} ms", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        side: {
            "first_token_ms": {"p50": round(percentile(values, 50), 1),
                               "p95": round(percentile(values, 95), 1), "n": len(values)},
            "prompt_tokens_p50": round(percentile(tokens[side], 50), 1),
        }
        for side, values in sides.items()
    }
    report["ratio_on_off_first_token_p50"] = round(
        report["on"]["first_token_ms"]["p50"] / report["off"]["first_token_ms"]["p50"], 2
    )
    return report


async def _call_ending_in_a_tool_answer(
    engine: LlamaCppLLM, session: str, tools: Any
) -> tuple[float, float]:
    """One call: its read-ahead (timed; the prompt tokens it read), then "What time is
    it?" and a tool answer's plain prompt, then its end. Returns (ms, tokens)."""
    system: ChatMessage = {"role": "system", "content": DEFAULT_INSTRUCTIONS}
    started = time.perf_counter()
    engine.warm(DEFAULT_INSTRUCTIONS, session, tools)
    await engine.until_idle(120)
    read_ms = (time.perf_counter() - started) * 1000.0
    read = float(engine.last_prompt_tokens)
    question: list[ChatMessage] = [system, {"role": "user", "content": "What time is it?"}]
    for choice in ("auto", "none"):  # the turn, then a tool answer's plain prompt
        async for _ in engine.stream_with_tools(
            question, tools=tools, max_tokens=8, temperature=0.0, session=session,
            tool_choice=choice,
        ):
            pass
    engine.release(session)
    return read_ms, read


async def _after_tool_answers(engine: LlamaCppLLM, rounds: int) -> dict[str, Any]:
    from pipeline.tools.builtin import builtin_tools

    tools: Any = [t.spec.openai() for t in builtin_tools(["get_current_time", "end_call"])]
    times: dict[str, list[float]] = {"on": [], "off": []}
    tokens: dict[str, list[float]] = {"on": [], "off": []}
    # The base is for read-aheads that list the tools: with cue words off. (With cues
    # on, the default, a read-ahead is the plain prompt, which a tool answer's prompt
    # shares: measured below as "with_cues".)
    cues, engine.tool_cues = engine.tool_cues, False
    base_default = engine.contexts.base_enabled
    for index in range(rounds * 2 + 1):
        side = "on" if index % 2 == 0 else "off"
        # The read-ahead keeps the base only while on: each "on" call starts from the
        # one before the last (the same instructions and tools).
        engine.contexts.base_enabled = side == "on"
        read_ms, read = await _call_ending_in_a_tool_answer(engine, f"tools-{index}", tools)
        if index > 0:  # the first call reads everything: nothing was read ahead before
            times[side].append(read_ms)
            tokens[side].append(read)
        print(f"new call after a tool answer {index + 1}/{rounds * 2 + 1} ({side}): "
              f"read ahead in {read_ms:.0f} ms", file=sys.stderr, flush=True)
    engine.contexts.base_enabled = True
    engine.tool_cues = True
    with_cues: list[float] = []
    with_cues_ms: list[float] = []
    for index in range(rounds):
        read_ms, read = await _call_ending_in_a_tool_answer(engine, f"cues-{index}", tools)
        if index > 0:
            with_cues.append(read)
            with_cues_ms.append(read_ms)
    engine.tool_cues = cues
    engine.contexts.base_enabled = base_default
    report: dict[str, Any] = {
        side: {"read_ahead_ms": {"p50": round(percentile(values, 50), 1),
                                 "p95": round(percentile(values, 95), 1), "n": len(values)},
               "prompt_tokens_p50": round(percentile(tokens[side], 50), 1)}
        for side, values in times.items()
    }
    report["ratio_on_off_read_ahead_p50"] = round(
        report["on"]["read_ahead_ms"]["p50"] / report["off"]["read_ahead_ms"]["p50"], 2
    )
    report["with_cues"] = {
        "base": "on",
        "read_ahead_ms": {"p50": round(percentile(with_cues_ms, 50), 1),
                          "p95": round(percentile(with_cues_ms, 95), 1), "n": len(with_cues_ms)},
        "plain_prompt_tokens_p50": percentile(with_cues, 50),
    }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.llm_contexts", description=__doc__)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=9, help="alternately on and off")
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.calls < 2 or args.rounds < 3:
        parser.error("--calls must be >= 2 and --rounds >= 3 (both sides measured)")
    report = asyncio.run(run(args.calls, args.rounds, args.max_tokens))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
