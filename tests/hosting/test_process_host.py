"""The process host's mechanics against small engines (tests/hosting/engines.py):
streaming, cancellation reaching the child, errors crossing with their class and
flag, a child that dies, a load that fails, and the stand-ins' protocols."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.base import CloningTTS, SegmentingSTT
from pipeline.engines.hosted import hosted_stt, hosted_tts
from pipeline.engines.process_host import EngineProcess, EngineSpec
from pipeline.errors import ModelLoadError, STTError, TTSError

COUNTING = "tests.hosting.engines:CountingTTS"


def wait_for(condition: object, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hosted")


@pytest.fixture(scope="module")
def tts(folder: Path):  # type: ignore[no-untyped-def]
    lines: list[str] = []
    engine = hosted_tts(
        EngineSpec(COUNTING, {"folder": str(folder), "delay_s": 0.02}, "tts"),
        progress=lines.append,
    )
    engine.lines = lines  # type: ignore[attr-defined]
    yield engine
    engine.close()


async def test_the_stand_in_answers_as_the_engine_would(tts) -> None:  # type: ignore[no-untyped-def]
    assert "counting engine loaded" in tts.lines
    assert tts.warmed == {"a": 1}
    assert (tts.name, tts.sample_rate, tuple(tts.voices())) == ("counting", 16_000, ("a",))
    assert isinstance(tts, CloningTTS) and tts.default_voice == "a"
    chunks = [chunk async for chunk in tts.synthesize("5 chunks", voice="a")]
    assert [float(chunk[0]) for chunk in chunks] == [0, 1, 2, 3, 4]
    assert all(chunk.dtype == np.float32 and len(chunk) == 160 for chunk in chunks)


async def test_concurrent_streams_keep_their_own_chunks(tts) -> None:  # type: ignore[no-untyped-def]
    async def count(n: int) -> list[float]:
        return [float(chunk[0]) async for chunk in tts.synthesize(f"{n} x")]

    results = await asyncio.gather(*(count(n) for n in (2, 7, 4, 1)))
    assert results == [list(map(float, range(n))) for n in (2, 7, 4, 1)]
    assert tts.hosts[0].in_flight == 0


async def test_closing_a_stream_cancels_it_in_the_child(tts, folder: Path) -> None:  # type: ignore[no-untyped-def]
    stream = tts.synthesize("1000 long", voice="a")
    assert float((await anext(stream))[0]) == 0
    await stream.aclose()
    assert await asyncio.to_thread(wait_for, (folder / "cancelled-1000 long").exists, 10)
    # ... and so does cancelling the task that iterates it (a barge-in).

    async def consume() -> None:
        async for _ in tts.synthesize("999 barged"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(wait_for, (folder / "cancelled-999 barged").exists, 10)
    assert tts.hosts[0].in_flight == 0


async def test_errors_cross_with_their_class_and_flag(tts) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TTSError, match="asked to fail") as failed:
        [chunk async for chunk in tts.synthesize("fail")]
    assert failed.value.transient is False
    with pytest.raises(TTSError, match="ZeroDivisionError: a bug") as bug:
        [chunk async for chunk in tts.synthesize("bug")]
    assert bug.value.transient is False
    # The engine is still there.
    assert len([chunk async for chunk in tts.synthesize("2 more")]) == 2


async def test_voices_added_and_removed_reach_the_child(tts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reference = tmp_path / "carol.wav"
    reference.write_bytes(b"RIFF")
    await tts.add_voice("carol", reference)
    assert tuple(tts.voices()) == ("a", "carol")
    with pytest.raises(TTSError, match="no reference"):
        await tts.add_voice("dave", tmp_path / "missing.wav")
    await tts.remove_voice("carol")
    assert tuple(tts.voices()) == ("a",)


async def test_a_child_that_dies_fails_its_requests_and_is_replaced(folder: Path) -> None:
    tts = await asyncio.to_thread(
        hosted_tts, EngineSpec(COUNTING, {"folder": str(folder), "delay_s": 0.05}, "dying"),
        processes=2, progress=lambda line: None,
    )
    try:
        first, second = tts.hosts
        # One long stream on each child; then one child dies.
        streams = [tts.synthesize("500 a"), tts.synthesize("500 b")]
        for stream in streams:
            await anext(stream)
        assert first.in_flight == second.in_flight == 1
        pid = first.pid
        with pytest.raises(TTSError, match="exited") as lost:
            async for _ in first.stream("synthesize", "die"):
                pass
        assert lost.value.transient
        with pytest.raises(TTSError) as in_flight:
            async for _ in streams[0]:
                pass
        assert in_flight.value.transient
        # While the first restarts, new utterances go to the second, and a voice
        # cannot be added to one child only: the second's is undone.
        assert not first.ready
        reference = folder / "eve.wav"
        reference.write_bytes(b"RIFF")
        with pytest.raises(TTSError, match="restarting"):
            await tts.add_voice("eve", reference)  # type: ignore[attr-defined]
        assert "eve" not in second.info["voices"]
        stream = tts.synthesize("2 c")
        assert len([chunk async for chunk in stream]) == 2
        assert await asyncio.to_thread(wait_for, lambda: first.ready, 60)
        assert first.pid != pid and first.restarts == 1
        assert len([chunk async for chunk in first.stream("synthesize", "3 d")]) == 3
        await streams[1].aclose()
    finally:
        await asyncio.to_thread(tts.close)


async def test_a_restarting_child_refuses_fast_and_transiently(folder: Path) -> None:
    host = await asyncio.to_thread(
        EngineProcess, EngineSpec(COUNTING, {"folder": str(folder)}, "once"),
        error=TTSError, progress=lambda line: None, restart=False,
    )
    try:
        with pytest.raises(TTSError):
            async for _ in host.stream("synthesize", "die"):
                pass
        with pytest.raises(TTSError, match="restarting") as refused:
            async for _ in host.stream("synthesize", "2 x"):
                pass
        assert refused.value.transient
    finally:
        host.close()
    with pytest.raises(TTSError, match="closed"):
        await host.call("remove_voice", "a")


def test_a_failed_load_is_a_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="RuntimeError: no weights here"):
        EngineProcess(EngineSpec("tests.hosting.engines:FailingEngine", {}, "broken"),
                      error=TTSError, progress=lambda line: None)
    with pytest.raises(ModelLoadError, match="ModuleNotFoundError"):
        EngineProcess(EngineSpec("tests.hosting.no_such_module:X", {}, "missing"),
                      error=TTSError, progress=lambda line: None)


async def test_an_stt_in_a_child_gets_the_audio_whole() -> None:
    stt = await asyncio.to_thread(
        hosted_stt, EngineSpec("tests.hosting.engines:EchoSTT", {}, "stt"),
        progress=lambda line: None,
    )
    try:
        assert not isinstance(stt, SegmentingSTT)
        audio = np.full(16_000 * 30, 0.25, dtype=np.float64)[::2]  # strided, float64
        transcript = await stt.transcribe(audio)
        assert transcript.text == f"{len(audio)} {0.25 * len(audio):.1f}"
        with pytest.raises(STTError, match="empty audio") as empty:
            await stt.transcribe(np.zeros(0, dtype=np.float32))
        assert not empty.value.transient
    finally:
        await asyncio.to_thread(stt.close)


async def test_the_placement_benchmark_measures_both_placements(folder: Path) -> None:
    """loadtest/speech_process.py's measurement, on the counting engine: the probe
    ticks for the whole run, does its work, and the speech is counted."""
    from loadtest.speech_process import calibrate, measure
    from tests.hosting.engines import CountingTTS

    iterations = calibrate(2.0)
    here = await measure(CountingTTS(str(folder), delay_s=0.01), 2, 1.0, iterations)
    tts = await asyncio.to_thread(
        hosted_tts, EngineSpec(COUNTING, {"folder": str(folder), "delay_s": 0.01}, "bench"),
        progress=lambda line: None,
    )
    try:
        there = await measure(tts, 2, 1.0, iterations)
    finally:
        await asyncio.to_thread(tts.close)
    for figures in (here, there):
        assert 40 <= figures["ticks"] <= 50
        assert 0 <= figures["lateness_p50_ms"] <= figures["lateness_max_ms"]
        assert figures["tick_work_p50_ms"] >= 1.0
        assert figures["audio_s_per_s"] > 0.1  # 10 ms of audio per 10 ms, per stream
