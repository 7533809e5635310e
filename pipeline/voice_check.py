"""Whether a recording can be a cloned voice's reference (sans-I/O).

A voice cloned from a bad reference sounds bad on every call that uses it, and
nobody hears why until then; so it is refused at upload, with the reason: too
short for the speaker encoder (Chatterbox listens to 6 to 10 s), too long to be
worth storing, too low a sample rate (the clone keeps the band it heard), too
quiet to carry a voice, or clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.engines.base import FloatAudio

WINDOW_S = 0.05
MIN_SAMPLE_RATE = 16_000
MIN_SPEECH_DBFS = -40.0
"""The loud part of a recording (its 90th-percentile 50 ms window) must reach this."""
MAX_CLIPPED_FRACTION = 0.005


@dataclass(frozen=True, slots=True)
class ReferenceRules:
    min_s: float
    max_s: float
    min_sample_rate: int = MIN_SAMPLE_RATE
    min_speech_dbfs: float = MIN_SPEECH_DBFS


def loud_level_dbfs(samples: FloatAudio, sample_rate: int) -> float:
    """The level of the loud part: the 90th percentile of 50 ms windows' RMS, in dBFS."""
    window = max(1, int(WINDOW_S * sample_rate))
    count = samples.size // window
    if count == 0:
        return -np.inf
    frames = samples[: count * window].reshape(count, window).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    level = float(np.percentile(rms, 90))
    return 20.0 * np.log10(level) if level > 0 else -np.inf


def reference_problem(
    samples: FloatAudio, sample_rate: int, source_rate: int, rules: ReferenceRules
) -> str | None:
    """Why ``samples`` (mono, at ``sample_rate``; recorded at ``source_rate``) cannot be
    a voice reference, or None."""
    seconds = samples.size / sample_rate
    if seconds < rules.min_s:
        return f"the recording lasts {seconds:.1f} s; a voice needs at least {rules.min_s:g} s"
    if seconds > rules.max_s:
        return f"the recording lasts {seconds:.1f} s; at most {rules.max_s:g} s are taken"
    if source_rate < rules.min_sample_rate:
        return (f"the recording's sample rate is {source_rate} Hz; a voice needs at least "
                f"{rules.min_sample_rate} Hz")
    level = loud_level_dbfs(samples, sample_rate)
    if level < rules.min_speech_dbfs:
        shown = "silent" if level == -np.inf else f"at {level:.0f} dBFS"
        return (f"the recording is too quiet to carry a voice ({shown}; its loud part must "
                f"reach {rules.min_speech_dbfs:g} dBFS)")
    clipped = float(np.mean(np.abs(samples) >= 0.999))
    if clipped > MAX_CLIPPED_FRACTION:
        return f"the recording is clipped ({clipped:.1%} of its samples at full scale)"
    return None
