"""One measured figure for every limit, fault and bad input the server handles.

    python -m loadtest.reliability [--quick] [--only NAME,NAME] [--json PATH]

Every scenario starts its own server on 127.0.0.1 and a free port (in a thread of
this process, or a child process where the figure is the server's own CPU time,
memory or exit), drives it into one situation with real sockets, and reports what
it measured, the settings it ran under, and whether the server kept its own rule
for that situation (the scenario's invariants, e.g. "503 for every attempt beyond
the limit"). Nothing is a timing test: timings are reported, and only bounds that
are part of the behaviour (a limit of 2 s closes the call after 2 s, not 10) are
invariants. The engines are the deterministic ``bench`` ones (scripted STT and
LLM, a tone for TTS) with the real Silero VAD, so the figures are the server's
own mechanics; the LLM faults run the real ``OpenAICompatLLM`` against a local
misbehaving endpoint (``loadtest.fault_llm``).

Progress goes to stderr, the table of figures to stdout, the report to ``--json``
(docs/reliability.md quotes it). Exit status 1 when any invariant failed.
``--quick`` runs every scenario smaller (the tests use it).

One module per concern, each readable on its own: ``admission`` (session limit,
latency admission), ``floods`` (frame and audio rates), ``abuse_impact`` (what each
abusive client of ``loadtest.abusers`` adds to the other calls' latency), ``oversized``,
``slow_reader``, ``time_limits``, ``llm_faults``, ``engine_faults``,
``disconnects``, ``model_load``, ``shutdown`` (drain), ``security``. What they
share is in ``common`` (``Result``, ``Context``, ``handshake``, ``dist``, ...) and
in ``loadtest.harness`` (servers, bench engines, callers, the metrics scrape).
``registry`` names the scenarios in run order, ``runner`` runs them, ``report``
prints the table and writes the JSON, ``cli`` is the command line.

Adding a scenario:

1. A new module here, say ``decode_cost.py``, with one coroutine
   ``async def decode_cost(ctx: Context) -> Result``. It fills ``ctx.result``:
   ``settings`` (what it ran under), ``figures`` (what it measured; keys ending
   ``_ms``, ``_s``, ``_count``, ``_per_s``, ``_mb`` or ``_bytes`` get that unit in
   the table, ``dist()`` gives n/p50/p95/max), one ``r.check(invariant, passed,
   detail)`` per rule the server must keep, and ``server_tracebacks`` when its
   server is a child process. It honours ``ctx.quick`` (smaller, for the tests),
   starts its servers with ``loadtest.harness`` (``serving`` or ``child_server``)
   and reports progress with ``ctx.step``. It returns ``ctx.result``.
2. One line in ``registry.SCENARIOS``: ``"decode_cost": decode_cost.decode_cost,``
   (and the module in the import above it). The position is the run order.

The runner adds "no server traceback logged" and turns a crash or a run past
``runner.SCENARIO_LIMIT_S`` (``FULL_LIMIT_S`` for the long ones) into a failed
invariant; tests/loadtest/test_reliability.py runs every registered scenario but
``shutdown`` in quick mode.
"""

from loadtest.reliability.cli import main
from loadtest.reliability.registry import SCENARIOS
from loadtest.reliability.report import flatten, print_table
from loadtest.reliability.runner import run, run_scenario

__all__ = ["SCENARIOS", "flatten", "main", "print_table", "run", "run_scenario"]
