"""S3Gen's voice prompt: trimmed to its last seconds, and its flow work cached per voice.

The real library (full-size S3Gen, random weights, a tiny T3) as in
test_chatterbox.py; the cached pass must give the library's mel bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.engines.chatterbox.prompt import (
    MEL_FRAMES_PER_TOKEN,
    FlowPrompt,
    aligned_prompt,
    flow_prompt,
    prompt_mel,
    trimmed_prompt,
)
from pipeline.errors import ConfigurationError
from tests.chatterbox.tiny_model import CHATTERBOX_MARKS

pytestmark = CHATTERBOX_MARKS

REFERENCE_SECONDS = 0.6
"""The tests' references are 1.5 s (37 tokens); the short prompt keeps 15 of them."""


def _ref_dict(tokens: int, frames: int) -> dict[str, Any]:
    """A ``ref_dict`` whose token ids and mel frames count up, so slices are legible."""
    return {
        "prompt_token": torch.arange(tokens)[None],
        "prompt_token_len": torch.tensor([tokens]),
        "prompt_feat": torch.arange(frames, dtype=torch.float32)[None, :, None].repeat(1, 1, 80),
        "prompt_feat_len": None,
        "embedding": torch.ones(1, 192),
    }


def test_trimmed_prompt_keeps_the_last_seconds_two_frames_per_token() -> None:
    # 10 s with embed_ref's odd extra frame: aligned first, then the last 3 s kept.
    prompt = trimmed_prompt(aligned_prompt(_ref_dict(250, 501)), 3.0)
    assert prompt["prompt_token"].tolist() == [list(range(175, 250))]
    assert int(prompt["prompt_token_len"]) == 75
    feat = prompt["prompt_feat"]
    assert feat.shape == (1, 75 * MEL_FRAMES_PER_TOKEN, 80)
    assert feat[0, :, 0].tolist() == list(range(350, 500)), "the frames of the kept tokens"
    assert prompt["embedding"] is not None and prompt["prompt_feat_len"] is None
    # Longer than the prompt: all of it; a sliver: one token, never none.
    assert trimmed_prompt(aligned_prompt(_ref_dict(40, 80)), 5.0)["prompt_token"].shape == (1, 40)
    assert trimmed_prompt(aligned_prompt(_ref_dict(40, 80)), 0.001)["prompt_feat"].shape[1] == 2
    for seconds in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="more than 0 seconds"):
            trimmed_prompt(_ref_dict(40, 80), seconds)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One checkpoint, loaded whole-prompt and short-prompt."""
    from pipeline.engines.chatterbox import ChatterboxTTS
    from tests.chatterbox.tiny_model import write_checkpoint, write_reference_wav

    root = tmp_path_factory.mktemp("prompt")
    config = write_checkpoint(root / "checkpoint", write_reference_wav(root / "voice.wav"))
    settings: dict[str, Any] = dict(
        device="cpu", t3_config=config, first_chunk_tokens=8, chunk_tokens=10,
        left_context_tokens=10, cfm_steps=2, max_new_tokens=40, seed=7,
    )  # fmt: skip
    loaded = {
        "whole": ChatterboxTTS(root / "checkpoint", **settings),
        "short": ChatterboxTTS(
            root / "checkpoint", reference_seconds=REFERENCE_SECONDS, **settings
        ),
    }
    yield loaded
    for engine in loaded.values():
        engine.close()


def test_the_engine_prompts_are_aligned_and_the_short_one_is_the_tail(
    engines: dict[str, Any],
) -> None:
    whole = engines["whole"]._voices["default"].ref_dict
    short = engines["short"]._voices["default"].ref_dict
    assert isinstance(whole, FlowPrompt) and isinstance(short, FlowPrompt)
    tokens = int(whole["prompt_token"].shape[1])
    assert whole["prompt_feat"].shape[1] == whole.frames == 2 * tokens
    assert short["prompt_token"].shape[1] == round(REFERENCE_SECONDS * 25) == 15
    assert short.frames == short["prompt_feat"].shape[1] == 30
    assert torch.equal(short["prompt_token"], whole["prompt_token"][:, -15:])
    assert torch.equal(short["prompt_feat"], whole["prompt_feat"][:, -30:])
    assert torch.equal(short.speaker, whole.speaker), "the speaker embedding is the whole clip's"


async def test_short_reference_streams_960_samples_per_token(engines: dict[str, Any]) -> None:
    engine = engines["short"]
    chunks = [chunk async for chunk in engine.synthesize_chunks("Hello there, how are you?")]
    progress = engine.last_progress
    assert progress.finished and len(chunks) >= 3
    audio = np.concatenate([chunk.audio for chunk in chunks])
    assert audio.size == 960 * progress.tokens
    assert np.isfinite(audio).all()


def test_cached_prompt_pass_is_the_librarys_mel_bit_for_bit(engines: dict[str, Any]) -> None:
    s3gen = engines["whole"]._model.s3gen
    for engine in engines.values():
        prompt = engine._voices["default"].ref_dict
        tokens = torch.randint(0, 6561, (1, 17), generator=torch.Generator().manual_seed(3))
        noise = torch.randn(1, 80, prompt.frames + 34, generator=torch.Generator().manual_seed(4))
        with torch.inference_mode():
            torch.manual_seed(5)
            library = s3gen(
                tokens, ref_wav=None, ref_sr=None, ref_dict=dict(prompt), finalize=True,
                skip_vocoder=True, n_cfm_timesteps=2, noised_mels=noise,
            )  # fmt: skip
            torch.manual_seed(5)
            cached = prompt_mel(s3gen, prompt, tokens, n_timesteps=2, noised_mels=noise)
        assert cached.shape == library.shape == (1, 80, 34)
        assert torch.equal(cached, library)


def test_streams_with_and_without_the_cache_give_the_same_audio(
    engines: dict[str, Any],
) -> None:
    from pipeline.engines.chatterbox.s3gen_stream import S3GenStream

    engine = engines["short"]
    s3gen = engine._model.s3gen
    cached = engine._voices["default"].ref_dict
    tokens = torch.randint(0, 6561, (30,), generator=torch.Generator().manual_seed(6)).tolist()
    outputs = []
    for prompt in (cached, dict(cached)):
        stream = S3GenStream(
            s3gen, prompt, max_tokens=30, cfm_steps=2, left_context_tokens=5,
            generator=torch.Generator().manual_seed(8),
        )  # fmt: skip
        pieces = []
        for end, final in ((13, False), (23, False), (30, True)):
            torch.manual_seed(end)  # HiFT's source noise
            pieces.append(stream.decode(tokens[:end], final=final))
        outputs.append(np.concatenate(pieces))
    assert outputs[0].size == 960 * 30
    assert np.array_equal(outputs[0], outputs[1])


def test_flow_prompt_whole_is_the_aligned_prompt(engines: dict[str, Any]) -> None:
    model = engines["whole"]._model
    prompt = flow_prompt(model.s3gen, model.conds.gen)
    aligned = aligned_prompt(model.conds.gen)
    assert prompt.keys() == aligned.keys()
    assert torch.equal(prompt["prompt_token"], aligned["prompt_token"])
    assert torch.equal(prompt.condition, aligned["prompt_feat"].transpose(1, 2))


@pytest.mark.parametrize("seconds", [0.0, -2.5])
def test_a_reference_of_no_seconds_is_a_configuration_error(tmp_path: Path, seconds: float) -> None:
    from pipeline.engines.chatterbox import ChatterboxTTS

    with pytest.raises(ConfigurationError, match="reference_seconds must be > 0"):
        ChatterboxTTS(tmp_path, device="cpu", reference_seconds=seconds)


def test_the_benchmark_runs_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A smoke run of loadtest.s3gen_prompt_bench at tiny sizes (no timing asserted)."""
    from loadtest import s3gen_prompt_bench

    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        s3gen_prompt_bench.main(
            ["--seconds", "1", "--trim", "0.4", "--repeats", "1", "--cfm-steps", "1",
             "--threads", "1", "--left-context", "2", "--chunk-tokens", "3", "--json", str(out)]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)  # the script sets the process's, for later tests too
    result = json.loads(out.read_text())
    assert result["cached_mel_equal"] == {"whole": True, "trimmed": True}
    assert (result["reference_s"], result["trimmed_s"]) == (1.0, 0.4)
    assert set(result["ratio_to_whole"]) == set(s3gen_prompt_bench.VARIANTS)
    assert "x1.00 of whole" in capsys.readouterr().out
