"""Turn-taking benchmark: is the caller cut off, how soon does the agent answer, and
does it tell a "mm-hmm" from a real interruption?

    python -m loadtest.turns [--url ws://127.0.0.1:8000/ws] [--policies JSON]
                             [--json out.json] [--plot curve.png] [--quick]

The labelled utterances (``loadtest.turn_corpus``) are made at run time, the same on
every run, and streamed over the real protocol in real time (20 ms frames of an open
microphone, ``loadtest.acoustic.TimedCaller``) to a server this starts itself on
127.0.0.1 and a free port (``--profile``, the embedded default unless told), or to
``--url``. Every trial is one fresh session with one turn-taking policy, a
``session.turn`` map; the policies alternate trial by trial (item 1 under every
policy, then item 2, …, with the order rotated), so a comparison between two of them
is interleaved in one run and the machine's drift hits both alike. A policy the server
refuses (``invalid_session``) is skipped with a message.

Per policy:

* false cut-off rate: a paused utterance whose turn ended before its last segment
  (a ``transcript.final`` ending before that segment's onset, or a
  ``response.created`` received before that onset was sent);
* latency: the acoustic end of speech (last 10 ms above −45 dBFS of the audio sent,
  timed when the frame holding it was sent) → the first audio of the reply to the
  whole utterance received, p50/p95;
* backchannels, coughs and noise played over a reply that cancelled it, and real
  interruptions that did not;
* interruption onset (acoustic) → the agent's audio stopping at the client: its
  ``response.audio.clear`` received (else the last audio of that response received).

``--cost-metric 'NAME{label="value"}'`` reads a Prometheus histogram of the server's
model inferences (``NAME_sum`` seconds / ``NAME_count``) before and after the run: the
mean cost of one. By default the Smart Turn model's
(``voiceforge_smart_turn_inference_seconds``); ``--cost-metric ''`` reads none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from agent.client import ClientError, VoiceForgeClient
from agent.metrics import SMART_TURN_INFERENCE
from agent.protocol import ServerMessage
from loadtest.acoustic import TimedCaller, elapsed_ms
from loadtest.latency import spawned_server
from loadtest.turn_corpus import KINDS, Item, build_corpus
from loadtest.turn_report import plot_tradeoff, print_table, summarize
from pipeline.events import (
    ResponseAudioClear,
    ResponseAudioDelta,
    ResponseAudioPause,
    ResponseCreated,
    ResponseDone,
    TranscriptFinal,
    TurnIgnored,
)

DEFAULT_POLICIES = (
    '[{"end_of_turn_silence_ms": 300}, {"end_of_turn_silence_ms": 500}, '
    '{"end_of_turn_silence_ms": 800}]'
)
QUICK_COUNTS = {"paused": 2, "complete": 1, "backchannels": 1, "interruptions": 1}
POLL_S = 0.02


@dataclass(frozen=True)
class Policy:
    name: str
    turn: dict[str, Any]
    session: dict[str, Any] = field(default_factory=dict)
    """Other ``session.update`` fields of the policy (``playback_pause``)."""


def parse_policies(text: str) -> list[Policy]:
    """A JSON list of ``session.turn`` maps, or of ``{"name": ..., "turn": {...},
    "session": {...}}`` (``session``: other fields of the update, e.g. ``playback_pause``)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--policies is not JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError("--policies takes a non-empty JSON list of session.turn maps")
    policies = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise ValueError(f"a policy is a JSON object, got {entry!r}")
        if "turn" in entry and isinstance(entry["turn"], dict):
            session = entry.get("session") or {}
            if not isinstance(session, dict) or "turn" in session:
                raise ValueError(f"a policy's session is a map without 'turn', got {session!r}")
            name = str(entry.get("name") or _name(entry["turn"]))
            policies.append(Policy(name, entry["turn"], session))
        else:
            policies.append(Policy(_name(entry), entry))
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must differ: {names}")
    return policies


def _name(turn: dict[str, Any]) -> str:
    if set(turn) == {"end_of_turn_silence_ms"}:
        return f"silence-{turn['end_of_turn_silence_ms']:g}"
    if turn.get("end_of_turn_policy") == "learned":
        threshold = turn.get("end_of_turn_threshold", 0.5)
        rest = {
            k: v for k, v in turn.items()
            if k not in ("end_of_turn_policy", "end_of_turn_threshold")
        }
        suffix = "".join(f",{k}={v}" for k, v in sorted(rest.items()))
        return f"learned-{threshold:g}{suffix}"
    return ",".join(f"{k}={v}" for k, v in sorted(turn.items()))


@dataclass
class Trial:
    item: str
    kind: str
    voice: str
    policy: str
    valid: bool = True
    note: str = ""
    cut_off: bool | None = None
    """Paused items: the turn ended before the last segment."""
    replied: bool | None = None
    """Turn items: the whole utterance got a reply with audio."""
    latency_ms: float | None = None
    """Acoustic end of speech sent → first reply audio received (client)."""
    server_ms: float | None = None
    """The server's own end_of_speech_to_first_audio_ms for that reply."""
    cancelled: bool | None = None
    """Over-speech items: the reply they were played over was cancelled."""
    stop_ms: float | None = None
    """Interruption onset (acoustic) sent → the reply's audio stopped at the client."""
    stop_source: str | None = None
    tool_calls: int | None = None
    """Turn items: tool calls the reply made (the embedded model calls the clock for
    some statements; each call is a second model turn, seconds on a CPU)."""
    transcripts: list[str] = field(default_factory=list)
    """Turn items: the server's final transcripts of the utterance, in order (more
    than one when it was cut off): what the policy's word cue read."""
    timings: dict[str, float] = field(default_factory=dict)
    """Turn items: the reply's ``response.done`` timings (the server's stages:
    ``end_of_turn_wait_ms``, ``stt_ms``, ``llm_first_token_ms``, ...)."""


@dataclass
class Config:
    url: str
    turn_timeout_s: float = 30.0
    over_speech_after_s: float = 0.6
    """How far into the reply's playback the caller speaks over it."""
    observe_s: float = 2.5
    """How long after the over-speech utterance to wait for the server's decision."""
    api_key: str | None = None


# ------------------------------------------------------------------ one trial


def analyse_turn(
    log: Sequence[tuple[float, ServerMessage]], last_segment_stream_ms: float,
    last_segment_sent_at: float | None,
) -> tuple[bool, str | None, bool]:
    """(cut off, id of the reply to the whole utterance, whether that turn was ignored).

    The turn that holds the whole utterance is the first ``transcript.final`` ending at
    or after the last segment's onset; every earlier final, and any reply created before
    that onset was sent, ended the turn too soon.
    """
    cut_off = False
    final_seen = False
    for arrived, message in log:
        if isinstance(message, TranscriptFinal) and not final_seen:
            if message.audio_end_ms < last_segment_stream_ms:
                cut_off = True
            else:
                final_seen = True
        elif isinstance(message, ResponseCreated):
            if last_segment_sent_at is not None and arrived < last_segment_sent_at:
                cut_off = True
            elif final_seen:
                return cut_off, message.response_id, False
        elif isinstance(message, TurnIgnored) and final_seen:
            return cut_off, None, True
    return cut_off, None, False


async def _wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(POLL_S)
    return predicate()


def _done_of(caller: TimedCaller, response_id: str, after: int = 0) -> ResponseDone | None:
    for _, message in caller.log[after:]:
        if isinstance(message, ResponseDone) and message.response_id == response_id:
            return message
    return None


async def _finish(caller: TimedCaller, response_id: str, timeout_s: float = 5.0) -> ResponseDone:
    """Cancel the reply (its length is not measured) and wait for its ``response.done``."""
    if _done_of(caller, response_id) is None:
        await caller.client.cancel(response_id)
    await _wait_until(lambda: _done_of(caller, response_id) is not None, timeout_s)
    done = _done_of(caller, response_id)
    if done is None:
        raise TimeoutError(f"no response.done for {response_id} within {timeout_s} s")
    return done


async def turn_trial(caller: TimedCaller, item: Item, trial: Trial, config: Config) -> None:
    client = caller.client
    log_start = len(caller.log)
    index = caller.utter(item.audio)
    await caller.wait_sent(index, len(item.audio) / 16000 + config.turn_timeout_s)
    last_stream_ms = caller.stream_ms(index, item.last_segment_ms)
    last_sent = caller.sent_at(index, item.last_segment_ms)
    end_sent = caller.acoustic_end_sent_at(index)
    state: tuple[bool, str | None, bool] = (False, None, False)

    def answered() -> bool:
        nonlocal state
        state = analyse_turn(caller.log, last_stream_ms, last_sent)
        _, response_id, ignored = state
        return ignored or (response_id is not None and response_id in client.first_audio_at)

    await _wait_until(answered, config.turn_timeout_s)
    trial.transcripts = [message.text for _, message in caller.log[log_start:]
                         if isinstance(message, TranscriptFinal)]
    cut_off, response_id, ignored = state
    trial.cut_off = cut_off if item.kind == "paused" else None
    trial.replied = response_id is not None and response_id in client.first_audio_at
    if ignored:
        trial.note = "turn ignored (no words recognised)"
    elif not trial.replied:
        trial.note = "no reply audio in time"
    if response_id is None:
        return
    if trial.replied:
        trial.latency_ms = elapsed_ms(end_sent, client.first_audio_at[response_id])
    done = await _finish(caller, response_id)
    trial.server_ms = done.timings.get("end_of_speech_to_first_audio_ms")
    trial.tool_calls = int(done.timings.get("tool_calls", 0))
    trial.timings = dict(done.timings)


async def over_speech_trial(
    caller: TimedCaller, item: Item, prompt: Any, trial: Trial, config: Config
) -> None:
    """Ask for a long reply, speak ``item`` over it, and see what the server does."""
    client = caller.client
    start = len(caller.log)
    caller.utter(prompt)
    created = await caller.wait_for(
        lambda m: isinstance(m, ResponseCreated), config.turn_timeout_s, after=start
    )
    assert isinstance(created, ResponseCreated)
    reply = created.response_id
    await caller.wait_for(
        lambda m: isinstance(m, ResponseAudioDelta) and m.response_id == reply,
        config.turn_timeout_s, after=start,
    )
    await asyncio.sleep(config.over_speech_after_s)
    if _done_of(caller, reply) is not None or not client.playback.is_playing(
        reply, time.monotonic()
    ):
        trial.valid, trial.note = False, "the reply ended before the caller spoke"
        return
    mark = len(caller.log)
    index = caller.utter(item.audio)
    await caller.wait_sent(index, len(item.audio) / 16000 + config.turn_timeout_s)
    onset_sent = caller.acoustic_onset_sent_at(index)
    await _wait_until(lambda: _done_of(caller, reply, mark) is not None, config.observe_s)
    clear_at = next(
        (t for t, m in caller.log[mark:]
         if isinstance(m, ResponseAudioClear) and m.response_id == reply),
        None,
    )
    # With playback pauses (protocol 1.1) the caller's player goes quiet at the
    # pause, before the verdict: that is when the agent stops at the caller's ear.
    pause_at = next(
        (t for t, m in caller.log[mark:]
         if isinstance(m, ResponseAudioPause) and m.response_id == reply),
        None,
    )
    if clear_at is not None:  # the clear flow ends in response.done: let it finish
        await _wait_until(lambda: _done_of(caller, reply, mark) is not None, config.observe_s)
    done = _done_of(caller, reply, mark)
    trial.cancelled = (
        done is not None and done.status.value == "cancelled" and done.reason != "client_cancelled"
    )
    if item.kind == "interruption" and trial.cancelled:
        if pause_at is not None:
            trial.stop_ms, trial.stop_source = elapsed_ms(onset_sent, pause_at), "pause"
        elif clear_at is not None:
            trial.stop_ms, trial.stop_source = elapsed_ms(onset_sent, clear_at), "clear"
        else:
            last_audio = max(
                (t for t, m in caller.log[start:]
                 if isinstance(m, ResponseAudioDelta) and m.response_id == reply),
                default=None,
            )
            trial.stop_ms, trial.stop_source = elapsed_ms(onset_sent, last_audio), "last_audio"
    if done is None:
        await _finish(caller, reply)


async def run_trial(
    item: Item, prompt: Any, policy: Policy, config: Config
) -> Trial:
    trial = Trial(item.name, item.kind, item.voice, policy.name)
    client = await VoiceForgeClient.connect(config.url, api_key=config.api_key)
    caller = TimedCaller(client)
    try:
        await client.update_session(input_sample_rate=16000, turn=policy.turn, **policy.session)
        caller.start()
        if item.kind in ("paused", "complete"):
            await turn_trial(caller, item, trial, config)
        else:
            await over_speech_trial(caller, item, prompt, trial, config)
    except Exception as exc:  # one broken trial (timeout, dropped call) is reported, not fatal
        trial.valid, trial.note = False, f"{type(exc).__name__}: {exc}"
    finally:
        await caller.stop()
        with contextlib.suppress(Exception):
            await client.close()
    return trial


# ------------------------------------------------------------------ the run


async def accepted_policies(
    url: str, policies: list[Policy], api_key: str | None
) -> tuple[list[Policy], dict[str, str]]:
    """The policies this server accepts, and why each other one was refused."""
    accepted, refused = [], {}
    for policy in policies:
        async with await VoiceForgeClient.connect(url, api_key=api_key) as client:
            try:
                await client.update_session(turn=policy.turn, **policy.session)
            except ClientError as exc:
                if not str(exc).startswith("invalid_session"):
                    raise
                refused[policy.name] = str(exc)
                continue
        accepted.append(policy)
    return accepted, refused


def schedule(items: Sequence[Item], policies: Sequence[Policy]) -> list[tuple[Item, Policy]]:
    """Every item under every policy, policy order rotated item by item (interleaved).

    The rotation counts items of the same kind: the kinds take turns too
    (``interleave_kinds``), and counted over the whole run, four kinds and two
    policies put the same policy first on every item of a kind. Going first
    matters: that trial's call follows another kind's call (a reply that called a
    tool leaves the model holding another prompt, and the next call re-reads its
    instructions and tools: 1.5 s more to the first token at the median in the
    2026-11-30 run, docs/benchmarks.md).
    """
    order = []
    seen: dict[str, int] = {}
    for item in items:
        position = seen.get(item.kind, 0)
        seen[item.kind] = position + 1
        shift = position % len(policies)
        for policy in [*policies[shift:], *policies[:shift]]:
            order.append((item, policy))
    return order


def interleave_kinds(items: Sequence[Item]) -> list[Item]:
    """Round-robin over the kinds, so any prefix of the run covers all of them."""
    by_kind = {kind: [i for i in items if i.kind == kind] for kind in KINDS}
    ordered: list[Item] = []
    while any(by_kind.values()):
        for kind in KINDS:
            if by_kind[kind]:
                ordered.append(by_kind[kind].pop(0))
    return ordered


async def run_benchmark(
    config: Config, items: Sequence[Item], prompts: dict[str, Any], policies: list[Policy],
    *, concurrency: int = 1,
) -> list[Trial]:
    """Run every (item, policy) trial, ``concurrency`` at a time, in schedule order."""
    plan = schedule(items, policies)
    trials: list[Trial | None] = [None] * len(plan)
    next_index = 0
    started = time.monotonic()

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(plan):
            position = next_index
            next_index += 1
            item, policy = plan[position]
            trial = await run_trial(item, prompts.get(item.prompt or ""), policy, config)
            trials[position] = trial
            done = sum(t is not None for t in trials)
            print(_progress_line(done, len(plan), time.monotonic() - started, trial),
                  file=sys.stderr, flush=True)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return [t for t in trials if t is not None]


def _progress_line(done: int, total: int, elapsed: float, trial: Trial) -> str:
    if not trial.valid:
        outcome = f"invalid: {trial.note}"
    elif trial.kind in ("paused", "complete"):
        cut = " CUT OFF" if trial.cut_off else ""
        latency = "-" if trial.latency_ms is None else f"{trial.latency_ms:.0f} ms"
        called = " (tool call)" if trial.tool_calls else ""
        outcome = f"latency {latency}{cut}{called}{' ' + trial.note if trial.note else ''}"
    else:
        outcome = "cancelled" if trial.cancelled else "not cancelled"
        if trial.stop_ms is not None:
            outcome += f", stopped after {trial.stop_ms:.0f} ms"
    return (f"  [{elapsed:5.0f}s] {done:3d}/{total}  {trial.policy:14s} {trial.item:34s} "
            f"{outcome}")


def parse_cost_metric(metric: str) -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME{label="value",...}`` → (NAME, labels)."""
    match = re.fullmatch(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?", metric.strip())
    if match is None:
        raise ValueError(f"--cost-metric takes NAME or NAME{{label=\"value\"}}, got {metric!r}")
    return match.group(1), dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))


def scrape_cost(url: str, metric: str) -> tuple[float, float] | None:
    """(sum seconds, count) of the histogram ``metric`` on the server's /metrics;
    ``metric`` may select labels: ``NAME{stage="end_of_turn_model"}``."""
    name, selector = parse_cost_metric(metric)
    parts = urlsplit(url)
    base = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    totals = {"_sum": 0.0, "_count": 0.0}
    seen = False
    for family in text_string_to_metric_families(text):
        # A labelled histogram is listed before its first observation: zero so far.
        seen = seen or family.name == name
        for sample in family.samples:
            suffix = sample.name.removeprefix(name)
            if suffix in totals and sample.name == name + suffix and all(
                sample.labels.get(k) == v for k, v in selector.items()
            ):
                totals[suffix] += sample.value
    return (totals["_sum"], totals["_count"]) if seen else None


def model_cost(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> dict[str, Any] | None:
    """Mean per inference over the run; None: the server does not expose the metric."""
    if before is None or after is None:
        return None
    count = after[1] - before[1]
    if count <= 0:
        return {"inferences": 0, "mean_ms": None}  # exposed, but the model never ran
    return {"inferences": int(count), "mean_ms": round(1000 * (after[0] - before[0]) / count, 2)}


@contextlib.contextmanager
def _server(url: str | None, profile: str) -> Iterator[str]:
    if url:
        yield url
        return
    with spawned_server(profile, echo=False) as started:
        print(f"started `voiceforge serve --profile {profile}` at {started}", file=sys.stderr)
        yield started


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.turns", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--url", help="ws://HOST:PORT/ws of a running server (default: start one)")
    parser.add_argument("--profile", default="embedded", help="profile of the started server")
    parser.add_argument("--policies", default=DEFAULT_POLICIES,
                        help="JSON list of session.turn maps (or {\"name\", \"turn\", "
                        "\"session\"} objects, session holding other fields such as "
                        "playback_pause), "
                        f"default {DEFAULT_POLICIES}")
    parser.add_argument("--quick", action="store_true",
                        help="a handful of utterances (2 paused, 1 complete, 1 backchannel, "
                        "1 interruption)")
    parser.add_argument("--limit", type=int, help="only the first N items (kinds interleaved)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=12, help="of the generated utterances")
    parser.add_argument("--no-piper", action="store_true", help="espeak-ng voices only")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="trials at once (>1 only to finish sooner: it loads the server)")
    parser.add_argument("--turn-timeout", type=float, default=30.0)
    parser.add_argument("--cost-metric", default=SMART_TURN_INFERENCE,
                        help="a server histogram of model inference seconds (default: "
                        "%(default)s; '' for none)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write the trade-off curve PNG here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        policies = parse_policies(args.policies)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.cost_metric:
            parse_cost_metric(args.cost_metric)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()}
    if not kinds <= set(KINDS):
        print(f"error: --kinds takes {', '.join(KINDS)}", file=sys.stderr)
        return 2
    counts = QUICK_COUNTS if args.quick else {}
    print("making the utterances ...", file=sys.stderr, flush=True)
    items, prompts = build_corpus(
        seed=args.seed, piper=not args.no_piper,
        progress=lambda line: print(line, file=sys.stderr, flush=True), **counts,
    )
    items = [i for i in interleave_kinds(items) if i.kind in kinds][: args.limit]
    api_key = os.environ.get("VOICEFORGE_API_KEY")
    with _server(args.url, args.profile) as url:
        config = Config(url=url, turn_timeout_s=args.turn_timeout, api_key=api_key)
        accepted, refused = asyncio.run(accepted_policies(url, policies, api_key))
        for name, why in refused.items():
            print(f"skipping policy {name}: the server refuses it ({why})", file=sys.stderr)
        if not accepted:
            print("error: the server accepts none of the policies", file=sys.stderr)
            return 2
        before = scrape_cost(url, args.cost_metric) if args.cost_metric else None
        trials = asyncio.run(
            run_benchmark(config, items, prompts, accepted, concurrency=args.concurrency)
        )
        after = scrape_cost(url, args.cost_metric) if args.cost_metric else None
    report = summarize(trials, [p.name for p in accepted])
    report.update({
        "policies": {p.name: p.turn for p in accepted},
        "policy_sessions": {p.name: p.session for p in accepted if p.session},
        "skipped_policies": refused,
        "model_cost": model_cost(before, after) if args.cost_metric else None,
        "cost_metric": args.cost_metric,
        "concurrency": args.concurrency,
        "items": [i.to_json() for i in items],
        "trials": [asdict(t) for t in trials],
    })
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_tradeoff(report, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
