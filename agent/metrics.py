"""Prometheus metrics, one registry per app so tests can run several apps.

Under ``voiceforge serve --workers N`` (``agent.workers``) the workers share one
port, so a scrape reaches whichever worker the kernel picks: every worker then
runs in prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by
the supervisor before it starts them) and any worker's ``/metrics`` is the sum over
all of them; what only a live process can say (its CPU, memory, tasks, threads)
follows with a ``worker`` label. docs/decisions.md says why not a label alone.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from pipeline.events import ResponseDone, ResponseStatus, ResponseToolResult

_INFERENCE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
"""Seconds per Smart Turn request: from a fast core to a loaded one
(loadtest/smart_turn_cost.py measures the model alone)."""

SMART_TURN_INFERENCE = "voiceforge_smart_turn_inference_seconds"

_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client reads it when a metric is created: set, values go to files there."""
WORKER_ENV = "VOICEFORGE_WORKER"
"""The worker's index (0..N-1) under ``--workers N``: the ``worker`` label."""
OPEN_CALLS = "voiceforge_sessions_active"
"""Open calls on every transport: what the autoscaler divides by the pods (deploy/)."""


def worker_id() -> str | None:
    """Which worker of ``--workers N`` this process is (None: the only one)."""
    return os.environ.get(WORKER_ENV)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_ENV) or None


class _Labelled(Collector):
    """Another collector's samples with a constant label added."""

    def __init__(self, inner: Collector, labels: dict[str, str]) -> None:
        self.inner = inner
        self.labels = labels

    def collect(self) -> Iterable[Metric]:
        for family in self.inner.collect():
            family.samples = [
                Sample(s.name, {**s.labels, **self.labels}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            ]
            yield family


class _Liveness(Collector):
    """This process's asyncio tasks and threads, read at scrape time (on the loop)."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "voiceforge_asyncio_tasks", "asyncio tasks alive on the server's loop",
            value=_task_count(),
        )
        yield GaugeMetricFamily(
            "voiceforge_threads", "Python threads alive in the server process",
            value=float(threading.active_count()),
        )


STAGES = {
    "end_of_turn_wait_ms": "end_of_turn_wait",
    "stt_ms": "stt",
    "stt_after_end_of_turn_ms": "stt_after_end_of_turn",
    "llm_first_token_ms": "llm_first_token",
    "first_chunk_text_ms": "first_chunk_text",
    "tts_first_audio_ms": "tts_first_audio",
    "tool_ms": "tools",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared_dir = multiprocess_dir()
        """Set: the values live in files there, summed over the workers at scrape."""
        # What only this process can say, read live at scrape time.
        self.live = CollectorRegistry() if self.shared_dir else self.registry
        worker = {"worker": worker_id() or str(os.getpid())}
        # process_cpu_seconds_total and process_resident_memory_bytes: the load
        # generator scrapes them before and after a run (Linux only; elsewhere empty).
        if self.shared_dir:
            self.live.register(_Labelled(ProcessCollector(registry=None), worker))
            self.live.register(_Labelled(_Liveness(), worker))
        else:
            ProcessCollector(registry=self.registry)
        self.first_audio = Histogram(
            "voiceforge_end_of_speech_to_first_audio_seconds",
            "End of the caller's speech to the first reply audio sent",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "voiceforge_stage_seconds",
            "Per-stage latency of a turn",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.smart_turn_inference = Histogram(
            SMART_TURN_INFERENCE,
            "Smart Turn model time per request on its worker thread (features included); "
            "a batch's time is shared evenly among its requests",
            buckets=_INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.sessions_active = Gauge(
            OPEN_CALLS, "Open calls (every transport)", registry=self.registry,
            multiprocess_mode="livesum",  # a pod's calls: its live workers' sum
        )
        self.sessions = Counter(
            "voiceforge_sessions", "Sessions opened", registry=self.registry
        )
        self.responses = Counter(
            "voiceforge_responses", "Responses by final status", ["status"], registry=self.registry
        )
        self.errors = Counter(
            "voiceforge_errors",
            "Error events sent, by code and category (transient, permanent, client)",
            ["code", "category"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "voiceforge_refusals",
            "Calls refused before they started, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.cancellations = Counter(
            "voiceforge_cancellations",
            "Responses cancelled, by reason (barge_in, client_cancelled, ...)",
            ["reason"],
            registry=self.registry,
        )
        self.disconnects = Counter(
            "voiceforge_disconnects",
            "Calls ended, by who or what ended them",
            ["reason"],
            registry=self.registry,
        )
        self.tool_calls = Counter(
            "voiceforge_tool_calls",
            "Tool calls by tool (server tools by name, every client tool as 'client') "
            "and outcome (ok, error, timeout, invalid_arguments, unknown_tool, cancelled)",
            ["tool", "status"],
            registry=self.registry,
        )
        self.tool_seconds = Histogram(
            "voiceforge_tool_seconds",
            "Time from a tool call to its result",
            ["tool"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dropped_audio = Counter(
            "voiceforge_dropped_audio_frames",
            "Reply audio frames dropped for clients that do not read",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "voiceforge_api_requests",
            "REST audio API requests (/v1/audio/*, /v1/voices), by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.api_audio_seconds = Counter(
            "voiceforge_api_audio_seconds",
            "Audio synthesised (speech) or transcribed (transcriptions) by the REST API",
            ["endpoint"],
            registry=self.registry,
        )
        # Leak detectors for soak runs (loadtest/soak.py): both must come back to
        # their idle level once the callers are gone. Read at scrape time, which
        # happens on the event loop. (A file-backed gauge cannot be read live.)
        if not self.shared_dir:
            self.registry.register(_Liveness())

    def exposition(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type: this process's metrics, or
        under workers every worker's summed plus this one's live figures."""
        if not self.shared_dir:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        summed = CollectorRegistry()
        MultiProcessCollector(summed, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(summed) + generate_latest(self.live), CONTENT_TYPE_LATEST

    def observe_smart_turn_batch(self, requests: int, seconds: float) -> None:
        """One Smart Turn model call (``BatchedSmartTurnWorker`` observer)."""
        for _ in range(requests):
            self.smart_turn_inference.observe(seconds / requests)

    def observe_tool(self, result: ResponseToolResult, server_tool: bool) -> None:
        """One tool outcome; a client's tool names stay out of the labels (unbounded)."""
        tool = result.name if server_tool else "client"
        self.tool_calls.labels(tool, result.status).inc()
        self.tool_seconds.labels(tool).observe(result.elapsed_ms / 1000.0)

    def observe_response(self, done: ResponseDone) -> None:
        self.responses.labels(done.status.value).inc()
        if done.status is ResponseStatus.CANCELLED:
            self.cancellations.labels(done.reason or "unknown").inc()
        first_audio = done.timings.get("end_of_speech_to_first_audio_ms")
        if first_audio is not None:
            self.first_audio.observe(first_audio / 1000.0)
        for key, stage in STAGES.items():
            if key in done.timings:
                self.stage.labels(stage).observe(done.timings[key] / 1000.0)


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped off the loop (never by /metrics)
        return float("nan")
