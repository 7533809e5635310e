"""Many utterances' T3 decoding advanced together, one batched step at a time.

Each stream (one utterance) owns rows of one shared KV cache: two with
classifier-free guidance (its conditional row, then the copy whose text embedding
is zeroed), one for Turbo. The rows are aligned at their ends: a stream that joins
with a shorter prompt is padded on the left, a longer one pads the others, and the
padding is masked out of attention; every row keeps its own positions, so a stream
sees exactly what it would see decoding alone. A stream that leaves gives its rows
back at once, and columns no row uses any more are cut. Each layer's keys and values
live in buffers with room to grow (``SlotCache``): a step writes its column in place.

A step samples one token for every stream from the hidden state of the previous
forward (the library's sampling, in batched form: classifier-free guidance,
repetition penalty over the tokens already sampled, temperature, min-p, top-p;
Turbo's temperature, top-k, top-p, repetition penalty), then runs one forward of
every continuing stream's token. Everything stays on the device but the sampled
ids, which cross to the host once per step for all streams. A stream with its own
``torch.Generator`` samples its row alone, from that generator, so its tokens are
the same whether it decodes alone or among others (``tests/chatterbox``); the
others share one multinomial draw.

A prompt's prefill is a forward of its own (the one a single stream runs), done
when the stream joins, between two steps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

SPEECH_VOCAB_SIZE = 6561
"""Tokens at or above this are T3's special tokens, which S3Gen cannot decode."""


@dataclass(frozen=True, slots=True)
class SamplingSettings:
    """The library's sampling parameters, with its defaults (``ChatterboxTTS.generate``)."""

    temperature: float = 0.8
    top_p: float = 1.0
    min_p: float = 0.05
    repetition_penalty: float = 1.2
    cfg_weight: float = 0.5
    """0 turns classifier-free guidance off (and halves the rows)."""
    max_new_tokens: int = 1000
    """At 25 tokens a second, 1000 tokens are 40 s of speech."""


@dataclass(frozen=True, slots=True)
class Sampled:
    """What one step gave one stream."""

    key: Hashable
    token: int | None
    """The sampled token (special tokens included, the stop token not); None when
    the stream stopped without one."""
    done: bool
    """The stream has left the batch: stop token, nothing left to sample, or its cap."""


@dataclass(slots=True)
class _Stream:
    key: Hashable
    max_tokens: int
    generator: torch.Generator | None
    sampled: int = 0


class T3Batch:
    """The T3 streams decoding together on one model (not thread-safe: one worker)."""

    def __init__(
        self,
        t3: Any,
        settings: SamplingSettings,
        *,
        turbo: bool = False,
        top_k: int = 1000,
        backbone: Callable[..., Any] | None = None,
    ) -> None:
        """``settings`` are every stream's but for ``max_new_tokens`` (given per
        stream to ``join``). ``turbo``: Turbo's GPT-2 T3 (no CFG, no min-p, its
        own processor order). ``backbone`` replaces ``t3.tfmr`` (a compiled copy)."""
        self._t3 = t3
        self._model = backbone or t3.tfmr
        self._settings = settings
        self._turbo = turbo
        self._cfg = not turbo and settings.cfg_weight > 0.0
        self.rows_per_stream = 2 if self._cfg else 1
        self._device = t3.speech_head.weight.device
        self._min_p = (
            MinPLogitsWarper(min_p=settings.min_p) if settings.min_p > 0.0 and not turbo else None
        )
        self._top_p = TopPLogitsWarper(top_p=settings.top_p) if settings.top_p < 1.0 else None
        self._top_k = TopKLogitsWarper(top_k) if turbo and top_k > 0 else None
        self._streams: list[_Stream] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        """(rows, columns): 1 where a row has a token, 0 for its left padding."""
        self._padded = False
        self._hidden: torch.Tensor | None = None
        """(rows, width): each row's last hidden state, where its next token comes from."""
        self._positions: torch.Tensor | None = None
        """(rows,): each row's next position."""
        self._seen: torch.Tensor | None = None
        """(streams, vocabulary): tokens the repetition penalty applies to."""
        self._fresh: torch.Tensor | None = None
        """(streams,): Turbo scores its first step against the start token only."""
        self.steps = 0
        """Batched steps run so far."""

    @property
    def rows(self) -> int:
        """Rows of the KV cache in use (``rows_per_stream`` per stream)."""
        return 0 if self._cache is None else int(self._cache.layers[0].keys.shape[0])

    @property
    def columns(self) -> int:
        """Positions of the KV cache (the longest row's, the others padded to it)."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    @property
    def padded(self) -> bool:
        """Some row has left padding (attention then takes a mask)."""
        return self._padded

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, key: Hashable) -> bool:
        return any(stream.key == key for stream in self._streams)

    def keys(self) -> list[Hashable]:
        return [stream.key for stream in self._streams]

    # -- joining and leaving ---------------------------------------------------------

    def join(
        self,
        key: Hashable,
        t3_cond: Any,
        text_tokens: torch.Tensor,
        *,
        max_tokens: int,
        generator: torch.Generator | None = None,
    ) -> None:
        """Prefill ``text_tokens`` ((1, T), framed as the library frames them) and
        add the stream; it samples its first token at the next ``step``."""
        if key in self:
            raise ValueError(f"stream {key!r} is decoding already")
        if max_tokens < 1:
            raise ValueError("a stream needs max_tokens >= 1")
        t3, hp = self._t3, self._t3.hp
        rows = self.rows_per_stream
        with torch.inference_mode():
            text = text_tokens.to(device=self._device, dtype=torch.long).expand(rows, -1)
            start = torch.full((rows, 1), hp.start_speech_token, dtype=torch.long)
            start = start.to(self._device)
            embeds, _ = t3.prepare_input_embeds(
                t3_cond=t3_cond,
                text_tokens=text,
                speech_tokens=start,
                cfg_weight=0.0 if self._turbo else self._settings.cfg_weight,
            )
            if not self._turbo:
                # The library appends the start-of-speech embedding once more after
                # the prompt (which already ends with it); the released weights are
                # used that way, so we do the same.
                bos = t3.speech_emb(start[:1]) + t3.speech_pos_emb.get_fixed_embedding(0)
                embeds = torch.cat([embeds, bos.expand(rows, -1, -1)], dim=1)
            output = self._model(inputs_embeds=embeds, past_key_values=SlotCache(), use_cache=True)
            seen = torch.zeros(1, self._vocabulary(), dtype=torch.bool, device=self._device)
            seen[0, hp.start_speech_token] = True
            self._merge(
                output.past_key_values,
                output.last_hidden_state[:, -1, :],
                length=int(embeds.shape[1]),
                seen=seen,
            )
        self._streams.append(_Stream(key, max_tokens, generator))

    def leave(self, key: Hashable) -> bool:
        """Drop the stream (a cancelled utterance); False if it was not decoding."""
        index = next((i for i, stream in enumerate(self._streams) if stream.key == key), None)
        if index is None:
            return False
        self._drop([index])
        return True

    def _vocabulary(self) -> int:
        return int(self._t3.speech_head.weight.shape[0])

    def _merge(
        self, cache: Any, hidden: torch.Tensor, *, length: int, seen: torch.Tensor
    ) -> None:
        rows = hidden.shape[0]
        positions = torch.full((rows,), length, dtype=torch.long, device=self._device)
        mask = torch.ones(rows, length, dtype=torch.long, device=self._device)
        if self._cache is None or not self._streams:
            self._cache, self._mask, self._positions = cache, mask, positions
            self._hidden = self._seen = self._fresh = None
            self._append_sampling_rows(hidden, seen)
            self._padded = False
            return
        assert self._mask is not None and self._positions is not None
        columns = int(self._mask.shape[1])
        if length < columns:
            cache_rows(cache, lambda t: _pad_left(t, columns - length))
            mask = torch.nn.functional.pad(mask, (columns - length, 0))
        elif length > columns:
            cache_rows(self._cache, lambda t: _pad_left(t, length - columns))
            self._mask = torch.nn.functional.pad(self._mask, (length - columns, 0))
        for ours, theirs in zip(self._cache.layers, cache.layers, strict=True):
            ours.replace(
                torch.cat([ours.keys, theirs.keys], dim=0),
                torch.cat([ours.values, theirs.values], dim=0),
            )
        self._mask = torch.cat([self._mask, mask], dim=0)
        self._positions = torch.cat([self._positions, positions])
        self._append_sampling_rows(hidden, seen)
        self._padded = length != columns or self._padded

    def _drop(self, indices: list[int]) -> list[int]:
        """Drop these streams; the others' old indices, in their new order."""
        gone = set(indices)
        keep = [i for i in range(len(self._streams)) if i not in gone]
        self._streams = [self._streams[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._hidden = None
            self._positions = self._seen = self._fresh = None
            self._padded = False
            return keep
        assert self._mask is not None and self._positions is not None
        rows = self.rows_per_stream
        streams = torch.tensor(keep, dtype=torch.long, device=self._device)
        row_index = (streams.unsqueeze(1) * rows + torch.arange(rows, device=self._device))
        row_index = row_index.reshape(-1)
        with torch.inference_mode():
            cache_rows(self._cache, lambda t: t.index_select(0, row_index))
            mask = self._mask.index_select(0, row_index)
            # Columns that only padding uses any more are cut.
            used = mask.any(dim=0).nonzero()
            first = int(used[0]) if used.numel() else 0
            if first:
                cache_rows(self._cache, lambda t: t[..., first:, :])
                mask = mask[:, first:]
            self._mask = mask
            self._padded = not bool(mask.all())
            self._positions = self._positions.index_select(0, row_index)
            self._keep_sampling_rows(streams, row_index)
        return keep

    # -- one step ----------------------------------------------------------------------

    def step(self) -> list[Sampled]:
        """Sample one token for every stream; forward those that go on.

        Streams that stop (their stop token, Turbo's all-masked scores, or their
        cap reached) leave the batch before the forward."""
        if not self._streams:
            return []
        with torch.inference_mode():
            return self._step()

    def _step(self) -> list[Sampled]:
        tokens, dead = self._sample()
        host = tokens.reshape(-1).tolist()
        dead_host = dead.tolist() if dead is not None else [False] * len(host)
        self.steps += 1
        stop = self._t3.hp.stop_speech_token
        results: list[Sampled] = []
        leaving: list[int] = []
        for index, (stream, token, is_dead) in enumerate(
            zip(self._streams, host, dead_host, strict=True)
        ):
            if is_dead or token == stop:
                results.append(Sampled(stream.key, None, True))
                leaving.append(index)
                continue
            stream.sampled += 1
            done = stream.sampled >= stream.max_tokens
            results.append(Sampled(stream.key, int(token), done))
            if done:
                leaving.append(index)
        if leaving:
            order = self._drop(leaving)
            tokens = tokens[order] if order else tokens[:0]
        if self._streams:
            self._forward(tokens)
        return results

    def _sample(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self._hidden is not None and self._seen is not None
        assert self._fresh is not None
        settings = self._settings
        logits = self._t3.speech_head(self._hidden)
        dead = None
        if self._turbo:
            if settings.temperature > 0 and settings.temperature != 1.0:
                logits = logits / settings.temperature
            history = cast(torch.LongTensor, torch.zeros(1, 1, dtype=torch.long))
            if self._top_k is not None:
                logits = self._top_k(history, logits)
            if self._top_p is not None:
                logits = self._top_p(history, logits)
            if settings.repetition_penalty != 1.0:
                logits = self._penalise(logits)
            dead = torch.all(logits == -float("inf"), dim=-1)
            # A stream whose every score is masked stops; its row must still sample.
            logits = torch.where(dead.unsqueeze(1), torch.zeros_like(logits), logits)
        else:
            logits = logits.float()
            if self._cfg:
                conditional, unconditional = logits[0::2], logits[1::2]
                logits = conditional + settings.cfg_weight * (conditional - unconditional)
            logits = self._penalise(logits)
            if settings.temperature != 1.0:
                logits = logits / settings.temperature
            history = cast(torch.LongTensor, torch.zeros(1, 1, dtype=torch.long))
            if self._min_p is not None:
                logits = self._min_p(history, cast(torch.FloatTensor, logits))
            if self._top_p is not None:
                logits = self._top_p(history, logits)
        probabilities = torch.softmax(logits, dim=-1)
        tokens = self._draw(probabilities)
        # The penalty's history: every token sampled (Turbo's after its first step
        # no longer holds the start token).
        if self._turbo:
            self._seen &= ~self._fresh.unsqueeze(1)
            self._fresh = torch.zeros_like(self._fresh)
        self._seen.scatter_(1, tokens, True)
        return tokens, dead

    def _penalise(self, logits: torch.Tensor) -> torch.Tensor:
        """HF's repetition penalty, over a mask of the tokens seen instead of ids."""
        assert self._seen is not None
        penalty = float(self._settings.repetition_penalty)
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        return torch.where(self._seen, penalised, logits)

    def _draw(self, probabilities: torch.Tensor) -> torch.Tensor:
        seeded = [i for i, stream in enumerate(self._streams) if stream.generator is not None]
        if not seeded:
            return torch.multinomial(probabilities, num_samples=1)
        tokens = torch.empty(len(self._streams), 1, dtype=torch.long, device=self._device)
        shared = [i for i, stream in enumerate(self._streams) if stream.generator is None]
        if shared:
            index = torch.tensor(shared, dtype=torch.long, device=self._device)
            tokens[index] = torch.multinomial(probabilities[index], num_samples=1)
        for i in seeded:
            tokens[i] = torch.multinomial(
                probabilities[i : i + 1], num_samples=1, generator=self._streams[i].generator
            )[0]
        return tokens

    def _token_embeds(self, tokens: torch.Tensor) -> torch.Tensor:
        """(rows, 1, width): each stream's sampled token embedded (with its speech
        position for the standard T3), repeated over the stream's rows."""
        t3, rows = self._t3, self.rows_per_stream
        embeds = t3.speech_emb(tokens)
        if not self._turbo:
            sampled = torch.tensor([stream.sampled for stream in self._streams],
                                   device=self._device)  # fmt: skip
            embeds = embeds + t3.speech_pos_emb.get_fixed_embedding(sampled.unsqueeze(1))
        repeated: torch.Tensor = embeds.repeat_interleave(rows, dim=0) if rows > 1 else embeds
        return repeated

    def _append_sampling_rows(self, hidden: torch.Tensor, seen: torch.Tensor) -> None:
        """A joining stream's last hidden state and penalty history, after the others'."""
        fresh = torch.ones(1, dtype=torch.bool, device=self._device)
        if self._hidden is None or self._seen is None or self._fresh is None:
            self._hidden, self._seen, self._fresh = hidden, seen, fresh
            return
        self._hidden = torch.cat([self._hidden, hidden], dim=0)
        self._seen = torch.cat([self._seen, seen])
        self._fresh = torch.cat([self._fresh, fresh])

    def _keep_sampling_rows(self, streams: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep these streams' (and their ``rows``') sampling state, in this order."""
        assert self._hidden is not None and self._seen is not None
        assert self._fresh is not None
        self._hidden = self._hidden.index_select(0, rows)
        self._seen = self._seen.index_select(0, streams)
        self._fresh = self._fresh.index_select(0, streams)

    def _forward(self, tokens: torch.Tensor) -> None:
        assert self._mask is not None and self._positions is not None
        with torch.inference_mode():
            embeds = self._token_embeds(tokens)
            self._mask = torch.nn.functional.pad(self._mask, (0, 1), value=1)
            output = self._model(
                inputs_embeds=embeds,
                attention_mask=self._mask if self._padded else None,
                position_ids=self._positions.unsqueeze(1),
                past_key_values=self._cache,
                use_cache=True,
            )
            self._cache = output.past_key_values
            self._hidden = output.last_hidden_state[:, -1, :]
            self._positions = self._positions + 1


class _SlotLayer(DynamicLayer):
    """One layer's keys and values in buffers with room to grow: a step writes its
    column in place. (transformers' DynamicLayer concatenates, copying the whole
    cache of every row at every step: at B = 16 with Turbo's 435-token prompts that
    is 16 rows x 24 layers x keys and values of 435 x 1024 float32, ~1.4 GB a step by
    arithmetic, the weights' own size.) When the room runs out the buffers double.
    ``keys`` / ``values`` are views of the filled part; ``replace`` puts new ones in."""

    _buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New keys and values (rows joined, left, padded or cut); the buffers are
        made afresh at the next step (joins and leaves are rare next to steps)."""
        self.keys, self.values = keys, values
        self._buffers = None

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._buffers = None
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        buffers = self._buffers
        if buffers is None or buffers[0].shape[-2] < needed:
            capacity = max(2 * needed, needed + 64)
            rows, heads, _, width = key_states.shape
            fresh = [
                key_states.new_zeros(rows, heads, capacity, width),
                value_states.new_zeros(rows, heads, capacity, value_states.shape[-1]),
            ]
            if length:
                keys, values = cast(torch.Tensor, self.keys), cast(torch.Tensor, self.values)
                fresh[0][..., :length, :] = keys
                fresh[1][..., :length, :] = values
            buffers = self._buffers = (fresh[0], fresh[1])
        buffers[0][..., length:needed, :] = key_states
        buffers[1][..., length:needed, :] = value_states
        self.keys = buffers[0][..., :needed, :]
        self.values = buffers[1][..., :needed, :]
        return self.keys, self.values


class SlotCache(DynamicCache):
    """A DynamicCache of ``_SlotLayer``s (what ``T3Batch`` hands the backbone)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=_SlotLayer)


def cache_rows(cache: SlotCache, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Apply ``change`` to every layer's keys and values."""
    for layer in cast(list[_SlotLayer], cache.layers):
        keys, values = cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values)
        layer.replace(change(keys), change(values))


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """(rows, heads, length, width) → ``columns`` zero positions before ``length``."""
    return torch.nn.functional.pad(tensor, (0, 0, columns, 0))
