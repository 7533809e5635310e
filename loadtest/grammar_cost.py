"""What a client's tool schemas can cost the embedded model (``python -m loadtest.grammar_cost``).

A client may offer up to 16 tools whose argument schemas are limited in size, depth
and counts (agent/protocol.py). The embedded engine writes a call under a grammar
built from them (pipeline/engines/llama_tools.py); the grammar's size and the time
per token sampled under it are what a hostile but legal schema costs the shared
model's worker. Compared with ``get_current_time``'s grammar, in one run, the
schemas alternating, each call cut at ``MAX_CALL_TOKENS`` tokens like the engine's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from pipeline.engines.llama_cpp import LlamaCppLLM
from pipeline.engines.llama_tools import MAX_CALL_TOKENS, TemplateTools
from pipeline.models import ensure_fast_gguf
from pipeline.session import DEFAULT_INSTRUCTIONS


def _tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function",
            "function": {"name": name, "description": "A tool.", "parameters": parameters}}


def _nested_arrays(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 256, "maxLength": 256}
    for _ in range(depth):
        schema = {"type": "array", "items": schema, "minItems": 256, "maxItems": 256}
    return schema


SCHEMAS: dict[str, list[dict[str, Any]]] = {
    "get_current_time": [_tool("get_current_time", {"type": "object", "properties": {}})],
    "16 tools x 8 arrays of 256 arrays of 256 strings of 256 chars": [
        _tool(f"t{i}", {
            "type": "object",
            "properties": {f"p{j}": _nested_arrays(2) for j in range(8)},
            "required": [f"p{j}" for j in range(8)],
        })
        for i in range(16)
    ],
    "16 tools x anyOf of 60 alternatives": [
        _tool(f"u{i}", {"type": "object", "properties": {"x": {"anyOf": [
            {"type": "string", "maxLength": 256},
            {"type": "integer"},
            {"type": "array", "items": {"type": "number"}, "maxItems": 256},
        ] * 20}}})
        for i in range(16)
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print("loading the embedded model ...", flush=True)
    engine = LlamaCppLLM(ensure_fast_gguf(progress=None), n_ctx=2048)
    try:
        writer = TemplateTools(engine._model)
        messages: Any = [{"role": "system", "content": DEFAULT_INSTRUCTIONS},
                         {"role": "user", "content": "Call a tool."}]
        prompt = writer.prompt(messages, SCHEMAS["get_current_time"])
        per_token: dict[str, list[float]] = {name: [] for name in SCHEMAS}
        call_ms: dict[str, list[float]] = {name: [] for name in SCHEMAS}
        built: dict[str, tuple[float, int]] = {}
        for round_number in range(1, args.rounds + 1):
            for name, tools in SCHEMAS.items():
                writer._grammars.clear()
                started = time.perf_counter()
                grammar = writer.call_grammar(tools)
                built[name] = ((time.perf_counter() - started) * 1000, len(grammar._grammar))
                # Sampling cost alone: the prompt evaluated first, then 32 tokens timed.
                engine._model.create_completion(prompt, max_tokens=1, temperature=0.0)
                started = time.perf_counter()
                result: Any = engine._model.create_completion(
                    prompt, max_tokens=32, temperature=0.0, grammar=grammar
                )
                tokens = max(1, int(result["usage"]["completion_tokens"]))
                per_token[name].append((time.perf_counter() - started) * 1000 / tokens)
                # The engine's own call: up to MAX_CALL_TOKENS, within its time budget.
                started = time.perf_counter()
                writer._constrained_call(prompt, tools, 0.0, stopped=lambda: False)
                call_ms[name].append((time.perf_counter() - started) * 1000)
                print(f"  round {round_number}/{args.rounds} {name}: "
                      f"{per_token[name][-1]:.0f} ms a token, the call {call_ms[name][-1]:.0f} ms",
                      flush=True)
        print(f"call time budget {writer.call_time_budget_s:.0f} s after the first token, "
              f"at most {MAX_CALL_TOKENS} tokens; medians of {args.rounds} rounds")
        print(f"{'schemas':<64} {'JSON':>7} {'grammar':>9} {'built':>7} {'ms/token':>9} "
              f"{'call ms':>8}")
        for name, tools in SCHEMAS.items():
            milliseconds, chars = built[name]
            print(f"{name:<64} {len(json.dumps(tools)):>7} {chars:>9} {milliseconds:>5.0f}ms "
                  f"{statistics.median(per_token[name]):>9.0f} "
                  f"{statistics.median(call_ms[name]):>8.0f}")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
