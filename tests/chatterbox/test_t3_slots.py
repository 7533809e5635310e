"""T3 on fixed-capacity slots (the CUDA-graph-capturable step), with the real
chatterbox-tts T3 and random weights: every stream samples what it samples alone
and in `T3Batch`, through joins, leaves (a slot moved into the hole), stops, and
bucket changes; and the bucket's forward traces as one graph (no host syncs or
Python branches on tensor values), which a CUDA graph capture needs."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from pipeline.engines.chatterbox.t3_slots import T3Slots, buckets
from tests.chatterbox.test_t3_batch import SETTINGS, STREAMS, _alone, _batched, _prompt
from tests.chatterbox.tiny_model import CHATTERBOX_MARKS, TinyChatterbox, tiny_t3

pytestmark = CHATTERBOX_MARKS

SLOTS = functools.partial(T3Slots, capacity=8, max_positions=256)


@pytest.fixture(scope="module", params=[False, True], ids=["standard", "turbo"])
def model(request: pytest.FixtureRequest) -> tuple[Any, Any, bool]:
    t3, cond = tiny_t3(turbo=request.param)
    return t3, cond, request.param


def test_buckets_are_powers_of_two_then_the_limit() -> None:
    assert buckets(16) == [1, 2, 4, 8, 16]
    assert buckets(12) == [1, 2, 4, 8, 12]
    assert buckets(2048, 128) == [128, 256, 512, 1024, 2048]
    assert buckets(1) == [1]


def test_streams_in_slots_sample_what_each_samples_alone(model: tuple[Any, Any, bool]) -> None:
    t3, cond, turbo = model
    caps = {index: 20 + 2 * index for index in range(STREAMS)}
    got, batch = _batched(t3, cond, turbo, caps, make=SLOTS)
    for index, cap in caps.items():
        assert got[index] == _alone(t3, cond, turbo, index, cap), f"stream {index}"
    assert isinstance(batch, T3Slots) and batch.steps < sum(caps.values())


def test_a_leaving_stream_hands_its_slot_to_the_last(model: tuple[Any, Any, bool]) -> None:
    t3, cond, turbo = model
    caps = {index: 30 for index in range(5)}
    # Streams 1 and 2 are cancelled early: 3 and 4 move into their slots, mid-stream.
    got, _ = _batched(t3, cond, turbo, caps, join_every=1, leave={1: 4, 2: 6}, make=SLOTS)
    for index in (0, 3, 4):
        assert got[index] == _alone(t3, cond, turbo, index, 30), f"stream {index}"
    for index, after in ((1, 4), (2, 6)):
        assert got[index] == _alone(t3, cond, turbo, index, 30)[: len(got[index])]
        assert len(got[index]) <= after + 1


def test_the_bucket_follows_the_streams_and_the_longest_row(
    model: tuple[Any, Any, bool],
) -> None:
    t3, cond, turbo = model
    batch = SLOTS(t3, SETTINGS, turbo=turbo)
    assert batch.bucket() == (1, 128)
    for index in range(3):
        batch.join(index, cond, _prompt(t3, index, turbo), max_tokens=200,
                   generator=torch.Generator().manual_seed(100 + index))  # fmt: skip
    assert batch.bucket()[0] == 4 and batch.rows == 3 * batch.rows_per_stream
    longest = batch.columns
    steps = 0
    while batch.bucket()[1] == 128:
        batch.step()
        steps += 1
    # The 128-column bucket holds rows up to 126 long (its last column is scratch).
    assert batch.columns == 127 and steps == 127 - longest
    assert batch.bucket() == (4, 256)
    assert batch.leave(0) and batch.leave(1) and batch.bucket() == (1, 256)
    # A prompt that would not fit is refused; a cap beyond the columns is cut.
    with pytest.raises(ValueError, match="does not fit"):
        batch.join("long", cond, _prompt(t3, 90, turbo), max_tokens=10)
    batch.join("capped", cond, _prompt(t3, 0, turbo), max_tokens=10_000)
    assert batch.keys() == [2, "capped"]


def test_a_full_set_of_slots_refuses_one_more(model: tuple[Any, Any, bool]) -> None:
    t3, cond, turbo = model
    batch = T3Slots(t3, SETTINGS, turbo=turbo, capacity=2, max_positions=128)
    for index in range(2):
        batch.join(index, cond, _prompt(t3, index, turbo), max_tokens=5)
    with pytest.raises(ValueError, match="all 2 slots are taken"):
        batch.join(2, cond, _prompt(t3, 2, turbo), max_tokens=5)
    assert batch.keys() == [0, 1]


def test_the_bucket_forward_traces_as_one_graph(model: tuple[Any, Any, bool]) -> None:
    """``torch.compile(fullgraph=True)`` fails on any graph break: a host sync
    (``.item()``, ``.tolist()``), a Python branch on a tensor's value, a shape that
    depends on data. A CUDA graph capture fails on the same things, so this is the
    CPU's check that the step can be captured (the capture itself needs CUDA)."""
    t3, cond, turbo = model
    batch = SLOTS(t3, SETTINGS, turbo=turbo)
    for index in range(3):
        batch.join(index, cond, _prompt(t3, index, turbo), max_tokens=20)
    batch.step()  # fills the static inputs for the bucket
    streams, columns = batch.bucket()
    torch._dynamo.reset()
    traced = torch.compile(batch._eager, backend="eager", fullgraph=True)
    with torch.inference_mode():
        eager = batch._eager(streams, columns).clone()
        again = traced(streams, columns)
    torch.testing.assert_close(again, eager)


async def test_the_engine_on_slots_speaks_the_same_tokens(tiny: TinyChatterbox) -> None:
    """``cuda_graphs=True`` (the gpu profile's ``VOICEFORGE_TTS_CUDA_GRAPHS``): the
    engine decodes on slots (run eagerly on CPU), keeps them between utterances,
    runs every bucket in its warm-up, and samples what the plain engine samples."""
    from pipeline.engines.chatterbox import ChatterboxTTS
    from tests.chatterbox.tiny_model import speech_tokens

    engine = ChatterboxTTS(
        tiny.checkpoint, device="cpu", voices_dir=tiny.voices_dir, t3_config=tiny.t3_config,
        first_chunk_tokens=8, chunk_tokens=12, left_context_tokens=12, cfm_steps=2,
        max_new_tokens=45, seed=1234, max_streams=4, cuda_graphs=True,
    )  # fmt: skip
    try:
        warmed = await engine.warm_up()
        assert set(warmed) == set(engine.voices())
        slots = engine._slots
        assert isinstance(slots, T3Slots) and slots.capacity == 4
        assert slots.max_positions == 45 + 1024
        assert slots.batch_buckets == [1, 2, 4] and len(slots.length_buckets) == 5
        for text, voice in (("Hello there, friend.", "alice"), ("See you soon.", "bob")):
            assert await speech_tokens(engine, text, voice) == await speech_tokens(
                tiny.engine, text, voice)
        assert engine._slots is slots, "the slots are kept between utterances"
    finally:
        engine.close()
