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
    yield from start_server(Settings(), sharing(load_embedded_engines()))


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


LOUD = 0.01
"""RMS above which a 20 ms frame of reply audio counts as sound (Piper speech is ~0.1)."""
