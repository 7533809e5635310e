"""`T3Batch` on fixed-capacity slots: a decode step whose every tensor has a fixed
shape, so a CUDA graph can capture it once and replay it at each step.

On a GPU a T3 step of a 0.5 B model at small batch is a few hundred kernel
launches, each a few microseconds of Python and driver time, and the GPU idles
between them; replaying a captured graph launches them all in one call (vLLM's
decode runs this way). `T3Batch` cannot be captured: its cache grows, rows are
padded and cut, and the shapes change at every step. Here:

- The keys and values of every layer live in buffers allocated once:
  ``capacity`` streams' rows by ``max_positions`` columns. A stream owns the rows
  of one slot; its tokens sit at columns ``0 .. length - 1``, so a row's column is
  its position and nothing is ever padded or shifted. Streams occupy slots
  ``0 .. n - 1``: when one leaves, the last stream's rows move into its slot.
- A step runs the backbone on a *bucket*: the first ``B`` slots (``B`` the
  smallest power of two holding every stream) and the first ``Lb`` columns (the
  smallest bucket longer than every row). Each row writes its new key and value at
  its own column (a scatter with a per-row index, set before the step), and
  attends through a float mask over the bucket's columns (a row's own columns
  open, the rest closed). Rows of the bucket with no stream write to a scratch
  column (``Lb - 1``, which no stream reaches in that bucket) and attend only to
  it, so they stay finite and touch nobody.
- With ``cuda_graphs`` (CUDA only) each bucket's forward is captured on first use
  and replayed after; its inputs are the static buffers, refilled in place before
  each replay. Sampling stays outside the graph (the library's samplers, as in
  `T3Batch`), as in vLLM.

The price: a bucket attends over ``Lb`` columns for ``B`` slots whatever the rows'
lengths, and the buffers hold ``capacity × max_positions`` columns from the start
(standard T3, 16 streams with CFG, 2048 columns in bfloat16: 30 layers × 2 × 32
rows × 2048 × 1024 × 2 bytes = 8 GB). What a stream samples is what it samples in
`T3Batch` and alone (tests/chatterbox/test_t3_slots.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from pipeline.engines.chatterbox.t3_batch import SamplingSettings, T3Batch

logger = logging.getLogger(__name__)

MIN_LENGTH_BUCKET = 128


def buckets(limit: int, first: int = 1) -> list[int]:
    """Powers of two from ``first`` below ``limit``, then ``limit`` itself."""
    sizes, size = [], first
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit]


class _FixedLayer(CacheLayerMixin):
    """One layer's keys and values: fixed buffers, written at each row's column."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write: torch.Tensor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.keys, self.values = keys, values
        self._write = write
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise AssertionError("slot buffers are allocated up front")

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        rows, heads, _, width = key_states.shape
        index = self._write.view(rows, 1, 1, 1).expand(rows, heads, 1, width)
        keys.scatter_(2, index, key_states)
        values.scatter_(2, index.expand(rows, heads, 1, value_states.shape[-1]), value_states)
        return keys, values

    def get_seq_length(self) -> int:
        return 0  # positions come from position_ids, the mask is given whole

    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        keys = self.keys
        assert keys is not None
        return int(keys.shape[-2]), 0

    def get_max_cache_shape(self) -> int:
        keys = self.keys
        assert keys is not None
        return int(keys.shape[-2])


class _BucketCache(Cache):
    """The backbone's view of the first ``rows`` rows and ``columns`` columns."""

    def __init__(self, layers: list[_FixedLayer]) -> None:
        super().__init__(layers=list(layers))


class T3Slots(T3Batch):
    """`T3Batch` whose decode step has fixed shapes per bucket (see the module)."""

    def __init__(
        self,
        t3: Any,
        settings: SamplingSettings,
        *,
        turbo: bool = False,
        top_k: int = 1000,
        backbone: Callable[..., Any] | None = None,
        capacity: int = 16,
        max_positions: int = 2048,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(t3, settings, turbo=turbo, top_k=top_k, backbone=backbone)
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if max_positions < MIN_LENGTH_BUCKET:
            raise ValueError(f"max_positions must be at least {MIN_LENGTH_BUCKET}")
        self.capacity = capacity
        self.max_positions = max_positions
        self.batch_buckets = buckets(capacity)
        self.length_buckets = buckets(max_positions, MIN_LENGTH_BUCKET)
        self._graphs_wanted = cuda_graphs and self._device.type == "cuda"
        self._graphs: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}
        self._pool: Any = None
        self._lengths: list[int] = []
        """Host copy: each slot's filled columns (its next position)."""
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._views: dict[tuple[int, int], tuple[_BucketCache, torch.Tensor]] = {}
        self._embeds = self._position = self._write = self._mask_in = torch.empty(0)

    @property
    def rows(self) -> int:
        return len(self._streams) * self.rows_per_stream

    @property
    def settings(self) -> SamplingSettings:
        return self._settings

    @property
    def columns(self) -> int:
        return max(self._lengths, default=0)

    @property
    def padded(self) -> bool:
        return False

    @property
    def graphs(self) -> list[tuple[int, int]]:
        """The (streams, columns) buckets captured as CUDA graphs so far."""
        return sorted(self._graphs)

    def bucket(self) -> tuple[int, int]:
        """The (streams, columns) bucket the next step runs."""
        streams = next(size for size in self.batch_buckets if size >= len(self._streams))
        # A row writes at its length; the bucket's last column is the scratch column.
        longest = max(self._lengths, default=0) + 2
        columns = next((size for size in self.length_buckets if size >= longest), 0)
        return streams, columns

    # -- buffers ---------------------------------------------------------------------

    def _allocate(self, prefill: Any, hidden: torch.Tensor) -> None:
        rows = self.capacity * self.rows_per_stream
        device, dtype = hidden.device, hidden.dtype
        for layer in prefill.layers:
            _, heads, _, width = layer.keys.shape
            shape = (rows, heads, self.max_positions, width)
            values_shape = (rows, heads, self.max_positions, layer.values.shape[-1])
            self._buffers.append((
                torch.zeros(shape, dtype=layer.keys.dtype, device=device),
                torch.zeros(values_shape, dtype=layer.values.dtype, device=device),
            ))  # fmt: skip
        self._embeds = torch.zeros(rows, 1, hidden.shape[-1], dtype=dtype, device=device)
        self._position = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self._write = torch.zeros(rows, dtype=torch.long, device=device)
        closed = torch.finfo(dtype).min
        self._mask_in = torch.full((rows, 1, 1, self.max_positions), closed, dtype=dtype,
                                   device=device)  # fmt: skip

    def _view(self, streams: int, columns: int) -> tuple[_BucketCache, torch.Tensor]:
        key = (streams, columns)
        if key not in self._views:
            rows = streams * self.rows_per_stream
            write = self._write[:rows]
            layers = [
                _FixedLayer(keys[:rows, :, :columns], values[:rows, :, :columns], write)
                for keys, values in self._buffers
            ]
            self._views[key] = (_BucketCache(layers), self._mask_in[:rows, :, :, :columns])
        return self._views[key]

    # -- joining and leaving ---------------------------------------------------------

    def _merge(
        self, cache: Any, hidden: torch.Tensor, *, length: int, seen: torch.Tensor
    ) -> None:
        if len(self._streams) >= self.capacity:
            raise ValueError(f"all {self.capacity} slots are taken")
        if length + 2 > self.max_positions:
            raise ValueError(
                f"a prompt of {length} positions does not fit {self.max_positions} columns"
            )
        if not self._buffers:
            self._allocate(cache, hidden)
        slot = len(self._streams)
        rows = self.rows_per_stream
        first = slot * rows
        for (keys, values), layer in zip(self._buffers, cache.layers, strict=True):
            keys[first : first + rows, :, :length] = layer.keys
            values[first : first + rows, :, :length] = layer.values
        self._mask_in[first : first + rows] = torch.finfo(self._mask_in.dtype).min
        self._mask_in[first : first + rows, ..., :length] = 0.0
        self._lengths.append(length)
        if not self._streams:
            self._hidden = self._seen = self._fresh = None
        self._append_sampling_rows(hidden, seen)

    def join(self, key: Hashable, t3_cond: Any, text_tokens: torch.Tensor, *,
             max_tokens: int, generator: torch.Generator | None = None) -> None:
        super().join(key, t3_cond, text_tokens, max_tokens=max_tokens, generator=generator)
        # The stream's last token goes at column length + max_tokens - 1; the bucket's
        # scratch column must lie beyond it.
        stream = self._streams[-1]
        room = self.max_positions - 2 - self._lengths[-1]
        if stream.max_tokens > room:
            stream.max_tokens = max(1, room)
            logger.warning("T3 slots: stream %r capped at %d tokens (max_positions %d)",
                           key, stream.max_tokens, self.max_positions)

    def _drop(self, indices: list[int]) -> list[int]:
        gone = set(indices)
        keep = [i for i in range(len(self._streams)) if i not in gone]
        count = len(keep)
        # Streams beyond the new count move into the holes below it.
        holes = [i for i in range(count) if i in gone]
        movers = [i for i in keep if i >= count]
        order = list(range(len(self._streams)))
        rows = self.rows_per_stream
        if movers:
            source = torch.tensor([m * rows + r for m in movers for r in range(rows)],
                                  device=self._device)  # fmt: skip
            target = torch.tensor([h * rows + r for h in holes for r in range(rows)],
                                  device=self._device)  # fmt: skip
            longest = max(self._lengths[m] for m in movers)
            with torch.inference_mode():
                for keys, values in self._buffers:
                    keys[:, :, :longest].index_copy_(
                        0, target, keys[:, :, :longest].index_select(0, source))
                    values[:, :, :longest].index_copy_(
                        0, target, values[:, :, :longest].index_select(0, source))
                self._mask_in.index_copy_(0, target, self._mask_in.index_select(0, source))
            for hole, mover in zip(holes, movers, strict=True):
                order[hole] = mover
        order = order[:count]
        self._streams = [self._streams[i] for i in order]
        self._lengths = [self._lengths[i] for i in order]
        if not order:
            self._hidden = self._seen = self._fresh = None
            return order
        streams = torch.tensor(order, dtype=torch.long, device=self._device)
        row_index = (streams.unsqueeze(1) * rows + torch.arange(rows, device=self._device))
        with torch.inference_mode():
            self._keep_sampling_rows(streams, row_index.reshape(-1))
        return order

    # -- one step ----------------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor) -> None:
        rows = self.rows_per_stream
        active = len(self._streams) * rows
        streams, columns = self.bucket()
        bucket_rows = streams * rows
        with torch.inference_mode():
            embeds = self._token_embeds(tokens)
            lengths = torch.tensor(
                [length for length in self._lengths for _ in range(rows)], device=self._device
            )
            self._embeds[:active].copy_(embeds)
            self._position[:active, 0].copy_(lengths)
            self._write[:active].copy_(lengths)
            # Each row now also sees the column it writes.
            self._mask_in[:active, 0, 0].scatter_(1, lengths.unsqueeze(1), 0.0)
            self._idle(active, bucket_rows, columns)
            hidden = self._run(streams, columns)
            self._hidden = hidden[:active].clone()
        self._lengths = [length + 1 for length in self._lengths]

    def _idle(self, first: int, end: int, columns: int) -> None:
        """Rows ``first .. end - 1`` have no stream: they write and read the bucket's
        scratch column only."""
        if end <= first:
            return
        idle = slice(first, end)
        self._embeds[idle] = 0.0
        self._position[idle] = 0
        self._write[idle] = columns - 1
        self._mask_in[idle, ..., :columns] = torch.finfo(self._mask_in.dtype).min
        self._mask_in[idle, ..., columns - 1] = 0.0

    def warm_buckets(self) -> int:
        """Run every bucket once while no stream decodes (capturing its graph with
        ``cuda_graphs`` on CUDA), so no caller waits for a capture. Needs the buffers
        (a stream has joined once). Returns the buckets run."""
        if len(self._streams) or not self._buffers:
            return 0
        ran = 0
        with torch.inference_mode():
            for streams in self.batch_buckets:
                for columns in self.length_buckets:
                    self._idle(0, streams * self.rows_per_stream, columns)
                    self._run(streams, columns)
                    ran += 1
        return ran

    def _run(self, streams: int, columns: int) -> torch.Tensor:
        """The bucket's forward: (rows, width) last hidden states."""
        key = (streams, columns)
        if self._graphs_wanted:
            captured = self._graphs.get(key)
            if captured is None:
                captured = self._capture(streams, columns)
            if captured is not None:
                graph, output = captured
                graph.replay()
                return output
        return self._eager(streams, columns)

    def _eager(self, streams: int, columns: int) -> torch.Tensor:
        rows = streams * self.rows_per_stream
        cache, mask = self._view(streams, columns)
        output = self._model(
            inputs_embeds=self._embeds[:rows],
            attention_mask=mask,
            position_ids=self._position[:rows],
            past_key_values=cache,
            use_cache=True,
        )
        hidden: torch.Tensor = output.last_hidden_state[:, -1, :]
        return hidden

    def _capture(self, streams: int, columns: int) -> tuple[Any, torch.Tensor] | None:
        """Capture the bucket's forward (its warm-up runs write what the step writes:
        the same inputs); None, and graphs off from then on, if capture fails."""
        try:
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._eager(streams, columns)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._pool):
                output = self._eager(streams, columns)
        except Exception:
            logger.exception("T3 slots: capturing bucket %s failed; decoding eagerly",
                             (streams, columns))
            self._graphs_wanted = False
            return None
        self._graphs[(streams, columns)] = (graph, output)
        return graph, output

