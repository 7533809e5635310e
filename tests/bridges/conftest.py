"""A real server with the real embedded engines, for the phone bridges."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from agent.config import Settings
from tests.e2e.conftest import RunningServer, load_embedded_engines, sharing, start_server
from tests.speech import espeak_available


@pytest.fixture(scope="module")
def bridge_server() -> Iterator[RunningServer]:
    if not espeak_available():
        pytest.fail("espeak-ng is required for the end-to-end tests (make test installs it)")
    # The tests need a reply of some seconds, not the 150-token default: a long
    # story made each call wait for 150 tokens of generation, which on two shared
    # cores under load took over 90 s (llm_total_ms of one telephony echo test run
    # beside a second one), and a test that waits for the reply to end ran past
    # its 180 s.
    yield from start_server(Settings(max_response_tokens=64), sharing(load_embedded_engines()))


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


LOUD = 0.01
"""RMS above which a 20 ms frame of reply audio counts as sound (Piper speech is ~0.1)."""
