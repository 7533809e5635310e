"""Batched T3 decoding across calls, with the real chatterbox-tts T3 and random weights.

Streams join at different steps with prompts of different lengths, stop at
different caps, leave early; each must sample exactly the tokens it samples when
decoded alone with the same seed (standard T3 with classifier-free guidance, and
Turbo's GPT-2 T3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

from pipeline.engines.chatterbox.t3_batch import SamplingSettings, T3Batch
from pipeline.engines.chatterbox.t3_stream import speech_tokens, turbo_speech_tokens
from tests.chatterbox.tiny_model import CHATTERBOX_MARKS, text_tokens, tiny_t3

pytestmark = CHATTERBOX_MARKS

STREAMS = 8
SETTINGS = SamplingSettings(max_new_tokens=40, top_p=0.95)


@pytest.fixture(scope="module", params=[False, True], ids=["standard", "turbo"])
def model(request: pytest.FixtureRequest) -> tuple[Any, Any, bool]:
    t3, cond = tiny_t3(turbo=request.param)
    return t3, cond, request.param


def _prompt(t3: Any, index: int, turbo: bool) -> torch.Tensor:
    # Prompts of different lengths, so rows are padded against each other.
    return text_tokens(t3, 4 + 3 * index, seed=index, turbo=turbo)


def _alone(t3: Any, cond: Any, turbo: bool, index: int, max_tokens: int) -> list[int]:
    settings = dataclasses.replace(SETTINGS, max_new_tokens=max_tokens)
    generator = torch.Generator().manual_seed(100 + index)
    tokens = turbo_speech_tokens if turbo else speech_tokens
    return list(tokens(t3, cond, _prompt(t3, index, turbo), settings, generator=generator))


def _batched(
    t3: Any,
    cond: Any,
    turbo: bool,
    caps: dict[int, int],
    *,
    join_every: int = 3,
    leave: dict[int, int] | None = None,
    make: Callable[..., T3Batch] = T3Batch,
) -> tuple[dict[int, list[int]], T3Batch]:
    """Stream i joins at step ``join_every * i``; ``leave`` maps a stream to the
    number of its tokens after which it is cancelled. ``make`` builds the batch
    (``T3Batch``, or test_t3_slots.py's slots)."""
    batch = make(t3, SETTINGS, turbo=turbo)
    got: dict[int, list[int]] = {index: [] for index in caps}
    pending = sorted(caps)
    for _ in range(1000):
        while pending and batch.steps >= join_every * pending[0]:
            index = pending.pop(0)
            generator = torch.Generator().manual_seed(100 + index)
            batch.join(index, cond, _prompt(t3, index, turbo), max_tokens=caps[index],
                       generator=generator)  # fmt: skip
        if not pending and not len(batch):
            break
        for sampled in batch.step():
            if sampled.token is not None and sampled.token < 6561:
                got[int(sampled.key)].append(sampled.token)  # type: ignore[call-overload]
        for index, after in (leave or {}).items():
            if index in batch and len(got[index]) >= after:
                assert batch.leave(index)
    assert not pending and not len(batch)
    return got, batch


def test_streams_decoded_together_sample_what_each_samples_alone(
    model: tuple[Any, Any, bool],
) -> None:
    t3, cond, turbo = model
    caps = {index: 20 + 2 * index for index in range(STREAMS)}
    got, batch = _batched(t3, cond, turbo, caps)
    for index, cap in caps.items():
        alone = _alone(t3, cond, turbo, index, cap)
        assert got[index] == alone, f"stream {index}"
        assert len(got[index]) >= cap // 2  # the tiny model's specials are dropped
    # Fewer steps than decoding the streams one after another.
    assert batch.steps < sum(caps.values())


def test_a_stream_that_leaves_frees_its_rows_and_the_rest_go_on_unchanged(
    model: tuple[Any, Any, bool],
) -> None:
    t3, cond, turbo = model
    batch = T3Batch(t3, SETTINGS, turbo=turbo)
    for index in range(3):
        batch.join(index, cond, _prompt(t3, index, turbo), max_tokens=30,
                   generator=torch.Generator().manual_seed(100 + index))  # fmt: skip
    batch.step()
    rows = batch.rows_per_stream
    assert batch.rows == 3 * rows
    assert batch.leave(1) and not batch.leave(1)
    assert batch.rows == 2 * rows and batch.keys() == [0, 2]
    # Stream 2's prompt is the longest: when it leaves, the columns that were
    # only stream 0's padding are cut.
    columns = batch.columns
    assert batch.leave(2) and batch.rows == rows
    assert batch.columns == columns - 6 and not batch.padded
    caps = {0: 30, 1: 30, 2: 30}
    got, _ = _batched(t3, cond, turbo, caps, join_every=0, leave={1: 5})
    assert got[0] == _alone(t3, cond, turbo, 0, 30)
    assert got[2] == _alone(t3, cond, turbo, 2, 30)
    assert got[1] == _alone(t3, cond, turbo, 1, 30)[: len(got[1])] and len(got[1]) <= 6


def test_a_stop_token_ends_one_stream_and_not_the_others(
    model: tuple[Any, Any, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny model never samples its real stop token, so a token it does sample
    is made the stop token: streams then stop at different steps."""
    t3, cond, turbo = model
    common = _alone(t3, cond, turbo, 0, 40)
    monkeypatch.setattr(t3.hp, "stop_speech_token", common[3])
    caps = {index: 40 for index in range(4)}
    got, _ = _batched(t3, cond, turbo, caps, join_every=2)
    lengths = set()
    for index in caps:
        alone = _alone(t3, cond, turbo, index, 40)
        assert got[index] == alone
        lengths.add(len(alone))
    assert len(got[0]) == 3  # stopped where its fourth token was the stop token
    assert len(lengths) > 1


def test_bad_joins_are_refused(model: tuple[Any, Any, bool]) -> None:
    t3, cond, turbo = model
    batch = T3Batch(t3, SETTINGS, turbo=turbo)
    batch.join("a", cond, _prompt(t3, 0, turbo), max_tokens=5)
    with pytest.raises(ValueError, match="already"):
        batch.join("a", cond, _prompt(t3, 0, turbo), max_tokens=5)
    with pytest.raises(ValueError, match="max_tokens"):
        batch.join("b", cond, _prompt(t3, 0, turbo), max_tokens=0)
    assert batch.keys() == ["a"] and batch.step()[0].key == "a"


def test_a_step_writes_its_column_in_place_instead_of_copying_the_cache(
    model: tuple[Any, Any, bool],
) -> None:
    t3, cond, turbo = model
    batch = T3Batch(t3, SETTINGS, turbo=turbo)
    for index in range(2):
        batch.join(index, cond, _prompt(t3, index, turbo), max_tokens=1000)
    batch.step()
    layer = batch._cache.layers[0]
    buffer = layer._buffers[0]
    columns = batch.columns
    for _ in range(5):
        batch.step()
    assert layer._buffers[0] is buffer  # the same storage, written in place
    assert layer.keys.data_ptr() == buffer.data_ptr()
    assert layer.keys.shape[-2] == batch.columns == columns + 5
    # Room runs out: the buffers grow (double) and keep every column written so far.
    before = layer.keys.clone()
    for _ in range(buffer.shape[-2] - batch.columns + 1):
        batch.step()
    assert len(batch) == 2
    assert layer._buffers[0] is not buffer
    assert layer._buffers[0].shape[-2] >= 2 * buffer.shape[-2]
    assert torch.equal(layer.keys[..., : before.shape[-2], :], before)
