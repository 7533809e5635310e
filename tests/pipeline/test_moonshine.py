"""Moonshine base on onnxruntime: the real model (set up from its wheels once, as the
``small-moonshine`` tier does), its re-saved graph against the shipped one, the
decode's bounds, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline import models
from pipeline.engines.base import STTEngine
from pipeline.engines.moonshine import (
    DECODER_FILE,
    MoonshineSTT,
    decode_token_budget,
    optimised_session,
    repeats_itself,
    without_repeated_sentences,
)
from pipeline.errors import STTError
from pipeline.tiers import TIERS
from tests.speech import espeak_available, silence, speak


@pytest.fixture(scope="module")
def folder() -> Path:
    found = models.ensure_tier_moonshine(TIERS["small-moonshine"], progress=None)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def stt(folder: Path):  # type: ignore[no-untyped-def]
    engine = MoonshineSTT(folder)
    yield engine
    engine.close()


def test_satisfies_the_seam(stt: MoonshineSTT) -> None:
    engine: STTEngine = stt  # checked by mypy
    assert engine.name == "moonshine:moonshine-base-en"


def test_the_whisper_tiers_have_no_moonshine() -> None:
    assert models.ensure_tier_moonshine(TIERS["small"], progress=None) is None
    assert TIERS["small-moonshine"].moonshine and TIERS["medium-moonshine"].moonshine


async def test_transcribes_a_spoken_question(stt: MoonshineSTT) -> None:
    if not espeak_available():
        pytest.fail("espeak-ng is required (make test installs it)")
    transcript = await stt.transcribe(speak("What is the capital of France?"))
    words = transcript.text.lower()
    assert "capital" in words and "france" in words
    assert transcript.audio_ms > 500 and transcript.elapsed_ms > 0


async def test_short_and_silent_audio(stt: MoonshineSTT) -> None:
    assert (await stt.transcribe(np.zeros(0, dtype=np.float32))).text == ""
    # 0.2 s is padded to the shortest length the encoder takes; silence says little.
    quiet = await stt.transcribe(silence(0.2))
    assert len(quiet.text.split()) <= 3


async def test_bad_audio_and_a_closed_engine_raise(folder: Path) -> None:
    engine = MoonshineSTT(folder)
    with pytest.raises(STTError, match="mono"):
        await engine.transcribe(np.zeros((2, 1600), dtype=np.float32))
    engine.close()
    with pytest.raises(STTError, match="closed"):
        await engine.transcribe(np.zeros(1600, dtype=np.float32))


def test_the_resaved_decoder_computes_what_the_shipped_one_does(folder: Path) -> None:
    """The re-saved, fully optimised graph only folds constants: one decoder step gives
    the shipped ORT-format graph's logits."""
    import onnxruntime

    shipped = onnxruntime.InferenceSession(
        str(folder / DECODER_FILE), providers=["CPUExecutionProvider"])
    resaved = optimised_session(folder / DECODER_FILE, cpu_threads=1)
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((1, 40, 416)).astype(np.float32)
    feed = {"input_ids": np.array([[1]], dtype=np.int64), "encoder_hidden_states": hidden,
            "use_cache_branch": np.array([False])}
    for item in shipped.get_inputs():
        if item.name.startswith("past_key_values."):
            feed[item.name] = np.zeros((1, item.shape[1], 0, item.shape[3]), dtype=np.float32)
    expected = shipped.run(["logits"], feed)[0]
    got = resaved.run(["logits"], feed)[0]
    assert got.shape == expected.shape == (1, 1, 32768)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    assert int(got.argmax()) == int(expected.argmax())


def test_decode_budget_grows_with_the_audio() -> None:
    assert decode_token_budget(0.0) == 12
    assert decode_token_budget(2.0) == 38
    assert decode_token_budget(10.0) > 3 * 10 * 3  # far above three words a second


@pytest.mark.parametrize(
    ("tokens", "cut"),
    [
        ([5, 6, 7], 0),
        ([5, 9, 9, 9, 9, 9, 9, 9], 0),          # digits are a token each: "5999-9999"
        ([3, 4, 3, 4, 3, 4], 0),                # short phrases repeat in speech
        ([8, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4], 8),  # four tokens three times: keep one
        ([1, 2, 3, 4, 1, 2, 3, 4], 0),          # twice
        ([7, *range(10, 16), *range(10, 16), *range(10, 16)], 12),
    ],
)
def test_a_phrase_said_three_times_back_to_back_is_cut_to_once(
    tokens: list[int], cut: int
) -> None:
    assert repeats_itself(tokens) == cut


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("No thanks. No thanks. No thanks.", "No thanks."),
        ("How do I reset it? how do I reset it?", "How do I reset it?"),
        ("No. Yes. No.", "No. Yes. No."),  # not back to back
        ("My number is 555. 555.", "My number is 555. 555."),  # a part, not a sentence again
        ("555. 555.", "555. 555."),  # digits may come twice
        ("", ""),
    ],
)
def test_a_sentence_said_again_right_after_itself_is_kept_once(text: str, kept: str) -> None:
    assert without_repeated_sentences(text) == kept
