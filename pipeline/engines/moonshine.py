"""Speech to text with Moonshine base (English) on onnxruntime, one worker thread.

Moonshine's encoder reads the raw 16 kHz samples of the utterance itself — no
30-second window to pad to, as Whisper's encoder has — so a two-second question
costs a two-second encoder pass. The decoder is the usual exported transformer
decoder with a key/value cache (``decoder_model_merged``: the first step fills the
cross-attention cache from the encoder's output, later steps reuse it and grow
the self-attention cache by one token). Decoding is greedy.

The model files come from Moonshine AI's ``moonshine-cpp`` wheel (the English
base model, MIT), the tokenizer from ``useful-moonshine-onnx``; both are fetched and
checked at set-up (``pipeline/tiers.py``, ``pipeline/models.py``), never at run time.

They are in ONNX Runtime's ORT format, whose graph onnxruntime runs as saved: the
decoder's weights are int8, turned back into float32 (Cast, Mul, Add) and the token
embedding transposed for the output layer **at every step**, ~100 ms a token on
two cores. Loading re-saves each model as ONNX (onnxruntime writes it; ``onnx``
names the ``If`` node's branches, which the ORT format leaves unnamed and the ONNX
checker refuses), and onnxruntime's full optimisation then folds those constants
once: ~10 ms a token, the same arithmetic (docs/decisions.md, "Moonshine").

A decode is bounded by the audio's length (``decode_token_budget``) and stops at a
phrase of four tokens or more said three times back to back (``repeats_itself``):
on silence or a cut word the model can loop on a phrase, and each extra token costs
a decoder step. A whole sentence said again right after itself is kept once
(``without_repeated_sentences``): "No thanks. No thanks. No thanks." on a short
"no thanks" (seen on the turn-taking corpus, docs/benchmarks.md).
"""

from __future__ import annotations

import math
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import PIPELINE_SAMPLE_RATE
from pipeline.engines.base import FloatAudio, Transcript
from pipeline.engines.threaded import transcribe_in_thread
from pipeline.errors import ModelLoadError

ENCODER_FILE = "encoder_model.ort"
DECODER_FILE = "decoder_model_merged.ort"
TOKENIZER_FILE = "tokenizer.json"
START_TOKEN = 1
END_TOKEN = 2
DECODE_TOKENS_PER_S = 13.0
"""Tokens a decode may produce per second of audio: speech makes well under half
(about 3 words a second, digits read out one token each)."""
DECODE_MIN_TOKENS = 12
MIN_AUDIO_S = 0.5
"""Shorter utterances are padded with silence to this: the encoder's strided
convolutions need some length, and "no" is ~0.3 s."""
TAIL_SILENCE_S = 0.25
"""Silence added after every utterance. A turn's audio can end right at the last
sound (the server cuts it where the VAD heard the speech stop, plus what has
arrived of the pad), and there the model may end its transcript before the first
word: "Hello, can you hear me?" cut 30 ms after its last sound decoded to nothing,
and with 0.2 s of silence after it to the whole sentence."""
REPEAT_MIN_PHRASE = 4
"""Shorter repeats are speech: digits are one token each ("555-5555"), and callers
say "no, no, no"."""
REPEAT_MAX_PHRASE = 12
REPEAT_TIMES = 3


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NOT_WORD = re.compile(r"[^a-z0-9']+")


def without_repeated_sentences(text: str) -> str:
    """``text`` with a sentence said again right after itself kept once: on a short
    utterance the model can say it twice or thrice ("No thanks. No thanks.")."""
    kept: list[str] = []
    last = None
    for sentence in _SENTENCE_END.split(text.strip()):
        key = _NOT_WORD.sub(" ", sentence.lower()).strip()
        # Digits alone may well come twice ("five five five. five five five.").
        if key and key == last and any(char.isalpha() for char in key):
            continue
        kept.append(sentence)
        last = key
    return " ".join(kept)


def decode_token_budget(audio_s: float) -> int:
    return math.ceil(DECODE_TOKENS_PER_S * max(audio_s, 0.0)) + DECODE_MIN_TOKENS


def repeats_itself(tokens: list[int]) -> int:
    """How many tokens to drop from the end of ``tokens`` because a phrase of
    ``REPEAT_MIN_PHRASE`` to ``REPEAT_MAX_PHRASE`` tokens ends them ``REPEAT_TIMES``
    times back to back (all but its first saying); 0 when none does."""
    for size in range(REPEAT_MIN_PHRASE, REPEAT_MAX_PHRASE + 1):
        span = size * REPEAT_TIMES
        if len(tokens) < span:
            break
        phrase = tokens[-size:]
        if all(tokens[-span + k * size: len(tokens) - span + (k + 1) * size] == phrase
               for k in range(REPEAT_TIMES)):
            return size * (REPEAT_TIMES - 1)
    return 0


def _name_branches(graph: Any, prefix: str) -> None:
    """Give every unnamed subgraph (an ``If`` node's branches) a name, recursively."""
    for node in graph.node:
        for attribute in node.attribute:
            for index, subgraph in enumerate([attribute.g, *attribute.graphs]):
                if not subgraph.node:
                    continue
                if not subgraph.name:
                    subgraph.name = f"{prefix}/{node.name}/{attribute.name}/{index}"
                _name_branches(subgraph, subgraph.name)


def optimised_session(path: Path, cpu_threads: int) -> Any:
    """An onnxruntime session of the ORT-format model at ``path``, re-saved as ONNX so
    that the full graph optimisation (constant folding included) applies."""
    import onnx
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="voiceforge-moonshine-") as folder:
        saved = Path(folder) / "model.onnx"
        as_is = onnxruntime.SessionOptions()
        as_is.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        as_is.optimized_model_filepath = str(saved)
        onnxruntime.InferenceSession(str(path), as_is, providers=providers)
        model = onnx.load(str(saved))
    _name_branches(model.graph, "main")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = cpu_threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=providers)


class MoonshineSTT:
    """Moonshine on 16 kHz mono float32 utterances."""

    def __init__(self, model_dir: str | Path, *, cpu_threads: int = 2) -> None:
        from tokenizers import Tokenizer

        folder = Path(model_dir)
        self.name = f"moonshine:{folder.name}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moonshine")
        try:
            self._encoder: Any = optimised_session(folder / ENCODER_FILE, cpu_threads)
            self._decoder: Any = optimised_session(folder / DECODER_FILE, cpu_threads)
            self._tokenizer: Any = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as error:
            self._executor.shutdown(wait=True)
            raise ModelLoadError(f"cannot load Moonshine model from {folder}: {error}") from error
        self._cache_inputs = [
            item for item in self._decoder.get_inputs() if item.name.startswith("past_key_values.")
        ]
        self._outputs = [item.name for item in self._decoder.get_outputs()]
        self._closed = False

    @property
    def multilingual(self) -> bool:
        return False

    async def transcribe(self, audio: FloatAudio) -> Transcript:
        """Transcribe a whole utterance. Raises STTError."""
        return await transcribe_in_thread(
            self._executor, self.name, self._closed, audio, self._transcribe_blocking
        )

    def _transcribe_blocking(self, samples: FloatAudio) -> str:
        if samples.size == 0:
            return ""
        tail = int(TAIL_SILENCE_S * PIPELINE_SAMPLE_RATE)
        shortest = int(MIN_AUDIO_S * PIPELINE_SAMPLE_RATE)
        samples = np.pad(samples, (0, max(tail, shortest - samples.size)))
        hidden = self._encoder.run(None, {"input_values": samples[None, :]})[0]
        tokens = self._decode(hidden, decode_token_budget(samples.size / PIPELINE_SAMPLE_RATE))
        text = without_repeated_sentences(
            str(self._tokenizer.decode(tokens, skip_special_tokens=True)))
        # Nothing but punctuation is nothing.
        return text if any(char.isalnum() for char in text) else ""

    def _decode(self, hidden: np.ndarray, budget: int) -> list[int]:
        cache = {
            item.name: np.zeros((0, item.shape[1], 1, item.shape[3]), dtype=np.float32)
            for item in self._cache_inputs
        }
        tokens: list[int] = []
        last = START_TOKEN
        for step in range(budget):
            outputs = self._decoder.run(None, {
                "input_ids": np.array([[last]], dtype=np.int64),
                "encoder_hidden_states": hidden,
                "use_cache_branch": np.array([step > 0]),
                **cache,
            })
            logits = outputs[0][0, -1]
            if step == 0:
                # The VAD heard speech here: a transcript that ends before its first
                # word is the model's mistake, not silence (see TAIL_SILENCE_S).
                logits = logits.copy()
                logits[END_TOKEN] = -np.inf
            last = int(np.argmax(logits))
            if last == END_TOKEN:
                break
            tokens.append(last)
            cut = repeats_itself(tokens)
            if cut:
                del tokens[-cut:]
                break
            for name, value in zip(self._outputs[1:], outputs[1:], strict=True):
                # The cross-attention cache is filled once, at the first step.
                if step == 0 or ".decoder." in name:
                    cache[name.replace("present.", "past_key_values.", 1)] = value
        return tokens

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)
