"""Each tier's tool-call threshold, calibrated (``python -m loadtest.call_confidence``).

On a turn that holds a built-in tool's cue (pipeline/tools/cues.py) the embedded
engine lets the model open a call only if its first token gives a call opening at
least ``Tier.call_confidence`` (pipeline/engines/llama_tools.py). Models differ in
scale: this asks each tier's model, as text (no speech), phrasings that ask for a
tool and phrasings that only mention one, each holding a cue, and reports the
probability of each and how many a threshold gets right. The phrasings are not
those of the spoken tool benchmark (``loadtest.tool_accuracy``), which stays held
out to check the chosen thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from pipeline import models
from pipeline.engines.llama_cpp import LlamaCppLLM
from pipeline.session import DEFAULT_INSTRUCTIONS
from pipeline.tiers import tier_named
from pipeline.tools.builtin import builtin_tools
from pipeline.tools.cues import call_plausible

ASKING = (
    "What's the time?", "Do you have the time?", "What date is it today?",
    "Which day is it today?", "Is it Tuesday today?", "Is it still morning?",
    "What hour is it where you are?", "Tell me the current time.",
    "Bye for now.", "That's all I wanted, goodbye.", "Alright, I need to go, bye.",
    "Please hang up now.", "Thank you, goodbye!", "We're done here, bye.",
    "Okay that's all, thanks.", "You can end the call now.",
)
"""Turns that ask for the clock or to end the call."""

MENTIONING = (
    "What time does the museum open?", "How do I say bye in French?",
    "Which day is best for shopping?", "Write a short goodbye note for my colleague.",
    "What does o'clock mean?", "What time zone is London in?",
    "Why do people say bye instead of goodbye?", "What date did the Second World War end?",
    "What day is Christmas this year?", "How long is the flight, and what time does it land?",
)
"""Turns that hold a cue and ask for neither."""

THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.8)


async def probabilities(engine: LlamaCppLLM, phrases: tuple[str, ...]) -> dict[str, float]:
    """The first token's call probability on each phrase's cue turn."""
    tools = [t.spec.openai() for t in builtin_tools(["get_current_time", "end_call"])]
    found: dict[str, float] = {}
    for phrase in phrases:
        if not call_plausible(phrase, tools):
            raise ValueError(f"{phrase!r} holds no cue: it would never reach the gate")
        messages: Any = [{"role": "system", "content": DEFAULT_INSTRUCTIONS},
                         {"role": "user", "content": phrase}]
        async for _ in engine.stream_with_tools(
            messages, tools=tools, max_tokens=2, temperature=0.0, session="calibration"
        ):
            pass
        writer = engine.template_tools()  # made by that stream, on the worker thread
        if writer.last_call_probability is None:
            raise RuntimeError(f"{phrase!r}: the call gate was not asked")
        found[phrase] = writer.last_call_probability
        writer.last_call_probability = None
    return found


def right_at(asking: dict[str, float], mentioning: dict[str, float], threshold: float) -> int:
    return (sum(p >= threshold for p in asking.values())
            + sum(p < threshold for p in mentioning.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", default="small,medium-moonshine",
                        help="tiers whose models to ask (one per model is enough)")
    parser.add_argument("--json", help="write every probability here")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    for name in args.tiers.split(","):
        tier = tier_named(name)
        print(f"{tier.name}: {tier.summary} (threshold {tier.call_confidence:g})", flush=True)
        engine = LlamaCppLLM(models.ensure_tier_llm(tier, print), n_ctx=2048)
        try:
            asking = asyncio.run(probabilities(engine, ASKING))
            mentioning = asyncio.run(probabilities(engine, MENTIONING))
        finally:
            engine.close()
        for label, found in (("asks", asking), ("mentions", mentioning)):
            for phrase, probability in found.items():
                print(f"  {label:8} {probability:7.4f}  {phrase}")
        total = len(ASKING) + len(MENTIONING)
        by_threshold = {str(t): right_at(asking, mentioning, t) for t in THRESHOLDS}
        scores = ", ".join(f"{t} {n}" for t, n in by_threshold.items())
        print(f"  right of {total} at threshold: {scores}")
        print(f"  asking: {min(asking.values()):.3f}-{max(asking.values()):.3f}; "
              f"mentioning: {min(mentioning.values()):.4f}-{max(mentioning.values()):.3f}")
        report[tier.name] = {
            "model": tier.llm.name, "threshold": tier.call_confidence,
            "right_at_threshold": right_at(asking, mentioning, tier.call_confidence),
            "of": total, "right_by_threshold": by_threshold,
            "asking": asking, "mentioning": mentioning,
        }
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
