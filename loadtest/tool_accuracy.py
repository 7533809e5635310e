"""How well the embedded model uses tools, heard from speech (``python -m loadtest.tool_accuracy``).

A fixed set of spoken requests, some that need a tool and some that do not (several of
those on purpose sound like they might: "how long should I boil an egg?", "how do you
say goodbye in Spanish?"), each spoken by an espeak-ng voice of a rotating set (accent,
variant, rate), each in a call of its own to a real ``voiceforge serve`` on 127.0.0.1.
A request counts as right when the model called the tool it needs with arguments that
say what was asked, or called nothing when nothing was needed.

Reported: accuracy, tool recall, false calls; and the latency of a turn that calls a
fast tool against one that calls none (acoustic end of speech → first reply audio, at
the client; the two kinds of turn are interleaved, so both see the same machine).

``--tools builtin`` (default): the server's defaults (``get_current_time``,
``end_call``); ``--tools demo`` adds loadtest/demo_tools.py (an order lookup and a
table booking), whose calls need arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.client import VoiceForgeClient
from loadtest.acoustic import TimedCaller, elapsed_ms
from loadtest.latency import percentile, spawned_server
from loadtest.speech import speak
from pipeline.events import ResponseDone, ResponseToolCall, TranscriptFinal


@dataclass(frozen=True)
class Request:
    said: str
    tool: str | None
    """The tool it needs; None: it needs none."""
    arguments: dict[str, str] = field(default_factory=dict)
    """Argument name → a regular expression its value (as text) must match."""
    demo: bool = False
    """Needs the demo tools' server (``--tools demo``)."""


REQUESTS = [
    Request("What time is it?", "get_current_time"),
    Request("Could you tell me the time, please?", "get_current_time"),
    Request("What's today's date?", "get_current_time"),
    Request("Do you know what day of the week it is?", "get_current_time"),
    Request("Is it morning or afternoon right now?", "get_current_time"),
    Request("Goodbye, that's all.", "end_call"),
    Request("Okay, thanks, bye!", "end_call"),
    Request("That's everything I needed. Have a nice day, goodbye.", "end_call"),
    Request("I have to go now, bye bye.", "end_call"),
    Request("What is the capital of France?", None),
    Request("How many legs does a spider have?", None),
    Request("How long should I boil an egg?", None),
    Request("What's a good time of year to visit Japan?", None),
    Request("Thanks, that was really helpful.", None),
    Request("Can you recommend a good book?", None),
    Request("What is two plus two?", None),
    Request("How do you say goodbye in Spanish?", None),
    Request("Tell me a short joke.", None),
    Request("What is the boiling point of water?", None),
    Request("Which planet is closest to the sun?", None),
    Request("How many hours are in a day?", None),
    Request("Hello, can you hear me?", None),
    Request("Where is my order number one two three four?", "order_status",
            {"order_number": r"1\s*2\s*3\s*4|one two three four"}, demo=True),
    Request("Can you check the status of order five six seven eight?", "order_status",
            {"order_number": r"5\s*6\s*7\s*8|five six seven eight"}, demo=True),
    Request("I'd like to book a table for four people on Friday.", "book_table",
            {"day": r"(?i)fri", "people": r"^4$"}, demo=True),
    Request("Please reserve a table for two on Saturday evening.", "book_table",
            {"day": r"(?i)sat", "people": r"^2$"}, demo=True),
    Request("Do you sell gift cards?", None, demo=True),
]

VOICES = [("en-us", 165), ("en-gb+m3", 145), ("en-us+f2", 185), ("en-gb", 200)]
"""(espeak-ng voice, words per minute), in turn."""


@dataclass
class Result:
    said: str
    voice: str
    words_per_minute: int
    needed: str | None
    transcript: str = ""
    called: list[tuple[str, str]] = field(default_factory=list)
    """(name, arguments) of every call the model made."""
    reply: str = ""
    acoustic_ms: float | None = None
    right: bool = False
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """The server's ``response.done`` timings (where the time went)."""


def judge(request: Request, called: list[tuple[str, str]]) -> bool:
    """Right: the needed tool with fitting arguments, or no call when none is needed."""
    if request.tool is None:
        return not called
    if not called or called[0][0] != request.tool:
        return False
    try:
        arguments = json.loads(called[0][1] or "{}")
    except ValueError:
        return False
    return all(
        name in arguments and re.search(pattern, str(arguments[name])) is not None
        for name, pattern in request.arguments.items()
    )


async def ask(url: str, request: Request, voice: str, rate: int) -> Result:
    result = Result(request.said, voice, rate, request.tool)
    audio = speak(request.said, voice=voice, words_per_minute=rate)
    async with await VoiceForgeClient.connect(url) as client:
        caller = TimedCaller(client)
        caller.start()
        try:
            spoken = caller.utter(audio)
            done = await caller.wait_done(120)
            assert isinstance(done, ResponseDone)
            result.transcript = " ".join(
                getattr(m, "text", "") for m in caller.messages(TranscriptFinal)
            )
            result.called = [
                (m.name, m.arguments) for m in caller.messages(ResponseToolCall)
                if isinstance(m, ResponseToolCall)
            ]
            result.reply = done.text.strip()
            result.timings = dict(done.timings)
            result.acoustic_ms = elapsed_ms(
                caller.acoustic_end_sent_at(spoken), client.first_audio_at.get(done.response_id)
            )
        except (TimeoutError, AssertionError) as error:
            result.error = f"{type(error).__name__}: {error}"[:200]
        finally:
            await caller.stop()
    result.right = result.error is None and judge(request, result.called)
    return result


def summarize(results: list[Result]) -> dict[str, Any]:
    needing = [r for r in results if r.needed is not None]
    plain = [r for r in results if r.needed is None]
    tool_turns = [r.acoustic_ms for r in results if r.called and r.acoustic_ms is not None]
    plain_turns = [r.acoustic_ms for r in results if not r.called and r.acoustic_ms is not None]
    summary: dict[str, Any] = {
        "requests": len(results),
        "accuracy": sum(r.right for r in results) / len(results),
        "tool_recall": sum(r.right for r in needing) / len(needing) if needing else None,
        "right_tool_any_arguments": (
            sum(bool(r.called) and r.called[0][0] == r.needed for r in needing) / len(needing)
            if needing else None
        ),
        "false_calls": sum(bool(r.called) for r in plain) / len(plain) if plain else None,
        "errors": sum(r.error is not None for r in results),
        "latency_ms": {
            "tool_turns": {"n": len(tool_turns), "p50": percentile(tool_turns, 50),
                           "p95": percentile(tool_turns, 95)},
            "plain_turns": {"n": len(plain_turns), "p50": percentile(plain_turns, 50),
                            "p95": percentile(plain_turns, 95)},
        },
    }
    latency = summary["latency_ms"]
    summary["added_latency_ms"] = {
        q: latency["tool_turns"][q] - latency["plain_turns"][q] for q in ("p50", "p95")
    }
    return summary


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    kinds = sorted({r.needed or "no tool" for r in results})
    right_counts = [sum(r.right for r in results if (r.needed or "no tool") == k) for k in kinds]
    totals = [sum((r.needed or "no tool") == k for r in results) for k in kinds]
    left.bar(kinds, totals, color="lightgray", label="requests")
    left.bar(kinds, right_counts, color="tab:green", label="right")
    left.set_title("Spoken requests handled right, by what they needed")
    left.tick_params(axis="x", rotation=20)
    left.legend()
    tool = [r.acoustic_ms for r in results if r.called and r.acoustic_ms is not None]
    none = [r.acoustic_ms for r in results if not r.called and r.acoustic_ms is not None]
    right.hist([tool, none], bins=12, label=["turns that called a tool", "turns that did not"])
    right.set_xlabel("acoustic end of speech → first reply audio (ms, client)")
    right.set_title("Latency")
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


async def run(url: str, requests: list[Request], passes: int) -> list[Result]:
    # Needing and not needing alternate, so both kinds of turn see the same machine.
    needing = [r for r in requests if r.tool is not None]
    plain = [r for r in requests if r.tool is None]
    order: list[Request] = []
    for index in range(max(len(needing), len(plain))):
        order += [*needing[index : index + 1], *plain[index : index + 1]]
    results: list[Result] = []
    total = len(order) * passes
    for number in range(passes):
        for index, request in enumerate(order):
            voice, rate = VOICES[(index + number) % len(VOICES)]
            result = await ask(url, request, voice, rate)
            results.append(result)
            mark = "right" if result.right else "WRONG"
            calls = ", ".join(f"{n}{a if a not in ('', '{}') else ''}" for n, a in result.called)
            print(f"  {len(results):2d}/{total} [{mark}] {voice}@{rate}: {result.transcript!r}"
                  f" -> {calls or 'no call'}; {result.acoustic_ms or 0:.0f} ms;"
                  f" {result.reply[:50]!r}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tools", choices=("builtin", "demo"), default="builtin")
    parser.add_argument("--passes", type=int, default=2,
                        help="times the set is asked, each time by the next voice")
    parser.add_argument("--url", help="an already running server (default: spawn one)")
    parser.add_argument("--env", action="append", default=[], metavar="VOICEFORGE_X=VALUE",
                        help="a setting of the spawned server (repeatable): "
                        "--env VOICEFORGE_TOOL_CUES=off")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    requests = [r for r in REQUESTS if args.tools == "demo" or not r.demo]
    env = {"VOICEFORGE_TOOL_MODULES": "loadtest.demo_tools"} if args.tools == "demo" else {}
    for setting in args.env:
        name, equals, value = setting.partition("=")
        if not equals or not name.startswith("VOICEFORGE_"):
            parser.error(f"--env {setting!r}: expected VOICEFORGE_NAME=VALUE")
        env[name] = value
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    if args.url:
        results = asyncio.run(run(args.url, requests, args.passes))
    else:
        with spawned_server("embedded", echo=False, env=env) as url:
            print(f"server ready at {url}; {len(requests)} requests x {args.passes}", flush=True)
            results = asyncio.run(run(url, requests, args.passes))
    summary = summarize(results)
    summary.update({
        "tools": args.tools,
        "passes": args.passes,
        "server_env": env,
        "seconds": round(time.monotonic() - started),
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python -m loadtest.tool_accuracy " + " ".join(argv or sys.argv[1:]),
    })
    latency = summary["latency_ms"]
    print(f"\naccuracy {summary['accuracy']:.0%} of {summary['requests']}; tool recall "
          f"{summary['tool_recall']:.0%} (right tool, any arguments "
          f"{summary['right_tool_any_arguments']:.0%}); false calls {summary['false_calls']:.0%};"
          f" errors {summary['errors']}")
    print(f"latency, tool turns p50 {latency['tool_turns']['p50']:.0f} / p95 "
          f"{latency['tool_turns']['p95']:.0f} ms (n={latency['tool_turns']['n']}); plain turns "
          f"p50 {latency['plain_turns']['p50']:.0f} / p95 {latency['plain_turns']['p95']:.0f} ms"
          f" (n={latency['plain_turns']['n']}); added p50 "
          f"{summary['added_latency_ms']['p50']:.0f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"summary": summary, "results": [asdict(r) for r in results]}, indent=2
        ) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
