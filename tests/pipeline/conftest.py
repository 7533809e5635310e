"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pipeline.vad import BatchedVADWorker, SileroVAD


@pytest.fixture
async def vad() -> AsyncIterator[BatchedVADWorker]:
    """The real Silero VAD on its batched worker, one per test."""
    worker = BatchedVADWorker(SileroVAD())
    await worker.start()
    yield worker
    await worker.stop()
