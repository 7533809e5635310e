"""Chatterbox's T3 decoding batched across calls, measured on this machine.

    python -m loadtest.t3_batch --json docs/benchmarks/t3-batch.json --plot docs/img/t3-batch.png

The real chatterbox-tts T3 at the library's own sizes (the standard model's
Llama 520M with classifier-free guidance, Turbo's GPT-2 medium), random weights,
float32 on this CPU. Two measurements per model:

- **Throughput by batch size**: B utterances decoding together
  (``pipeline.engines.chatterbox.t3_batch.T3Batch``), tokens per second over
  ``--steps`` steps after a warm-up; the sizes are measured in turn, ``--rounds``
  times over, and each round's figures are compared within the round (ratio to
  B = 1 of the same round); the table gives the median round.
- **A newcomer behind seven speaking**: through the engine's real scheduler
  (``worker.SpeechWorker``) with T3 only (no S3Gen: its decodes are the same work
  whether batched or not), how many steps a new utterance waits to join while 7
  are speaking, and the time from its request to its first chunk's tokens (10 + 3
  lookahead) against the same utterance alone, interleaved.

On a GPU the step of a 0.5 B model is bound by reading its weights, not by the
batch, so these CPU ratios are a lower bound for what batching gives there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

FIRST_CHUNK_TOKENS = 10 + 3
"""The engine's default first chunk (10 tokens) and S3Gen's lookahead (3)."""
PROMPT_CHARACTERS = 60


def build(model: str, *, tiny: bool = False) -> tuple[Any, Any, Any]:
    """A random-weight T3 of the library's size (``tiny``: 2 layers, for tests),
    a voice's conditioning and a prompt."""
    import torch
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.models.t3.modules.t3_config import T3Config

    torch.manual_seed(0)
    turbo = model == "turbo"
    if turbo:
        # ChatterboxTurboTTS.from_local's hyper-parameters.
        config = T3Config(text_tokens_dict_size=50276)
        config.llama_config_name = "GPT2_medium"
        config.speech_tokens_dict_size = 6563
        config.input_pos_emb = None
        config.speech_cond_prompt_len = 375
        config.use_perceiver_resampler = False
        config.emotion_adv = False
    else:
        config = T3Config.english_only()
    if tiny:
        name = f"voiceforge_bench_tiny_{model}"
        base = LLAMA_CONFIGS[config.llama_config_name]
        if turbo:
            small = {"n_embd": 64, "hidden_size": 64, "n_head": 4, "n_layer": 2}
        else:
            small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 4,
                     "head_dim": 16}  # fmt: skip
        LLAMA_CONFIGS[name] = {**base, **small}
        config.llama_config_name = name
        config.use_perceiver_resampler = False
        config.speech_cond_prompt_len = 30
    t3 = T3(config).eval()
    with torch.no_grad():
        # Random weights would sample the stop token now and then; a benchmark
        # wants streams that speak until their cap.
        t3.speech_head.weight[config.stop_speech_token].zero_()
        if t3.speech_head.bias is not None:
            t3.speech_head.bias[config.stop_speech_token] = -1e4
    cond = T3Cond(
        speaker_emb=torch.randn(1, config.speaker_embed_size),
        cond_prompt_speech_tokens=torch.randint(0, 6561, (1, config.speech_cond_prompt_len)),
        emotion_adv=None if turbo else 0.5 * torch.ones(1, 1, 1),
    )
    ids = torch.randint(4, 200, (1, PROMPT_CHARACTERS), generator=torch.Generator().manual_seed(1))
    if not turbo:
        ids = torch.nn.functional.pad(ids, (1, 0), value=config.start_text_token)
        ids = torch.nn.functional.pad(ids, (0, 1), value=config.stop_text_token)
    return t3, cond, ids


def throughput(
    t3: Any, cond: Any, prompt: Any, *, turbo: bool, size: int, steps: int, warm_up: int = 2
) -> dict[str, float]:
    """Tokens a second with ``size`` utterances decoding together."""
    from pipeline.engines.chatterbox.t3_batch import SamplingSettings, T3Batch

    batch = T3Batch(t3, SamplingSettings(), turbo=turbo)
    for key in range(size):
        batch.join(key, cond, prompt, max_tokens=10_000)
    for _ in range(warm_up):
        batch.step()
    started = time.perf_counter()
    tokens = sum(len(batch.step()) for _ in range(steps))
    elapsed = time.perf_counter() - started
    return {"tokens_per_s": tokens / elapsed, "step_ms": elapsed / steps * 1000}


class _TokensOnly:
    """A ``worker.Job`` with T3 alone: a "chunk" is the time its tokens were there."""

    def __init__(self, cond: Any, prompt: Any, *, chunk_tokens: int = 25) -> None:
        self._cond = cond
        self._prompt = prompt
        self._chunk_tokens = chunk_tokens
        self._tokens = 0
        self._due = FIRST_CHUNK_TOKENS
        self.first_chunk_pending = True

    def join(self, batch: Any, key: int) -> None:
        batch.join(key, self._cond, self._prompt, max_tokens=10_000)

    def take(self, token: int | None) -> bool:
        self._tokens += token is not None
        return self._tokens >= self._due

    def chunk(self) -> float:
        self._due += self._chunk_tokens
        self.first_chunk_pending = False
        return time.perf_counter()

    def finish(self) -> None:
        return None


async def newcomer(
    t3: Any, cond: Any, prompt: Any, *, turbo: bool, speaking: int
) -> dict[str, float]:
    """Request → first chunk's tokens for one utterance while ``speaking`` others
    decode; and how many steps it waited to join."""
    from pipeline.engines.chatterbox.t3_batch import SamplingSettings, T3Batch
    from pipeline.engines.chatterbox.worker import SpeechWorker

    executor = ThreadPoolExecutor(max_workers=1)
    worker = SpeechWorker(
        executor,
        lambda: T3Batch(t3, SamplingSettings(), turbo=turbo),
        max_streams=speaking + 1,
        name="bench",
        decode_many=lambda jobs: [job.chunk() for job in jobs],
    )
    others = [worker.stream(_TokensOnly(cond, prompt)) for _ in range(speaking)]
    try:
        for stream in others:
            await anext(stream)  # each has spoken: all are in the batch
        # Consume the speaking ones' chunks as a caller's response would.
        drains = [asyncio.create_task(_drain(stream)) for stream in others]
        started = time.perf_counter()
        mine = worker.stream(_TokensOnly(cond, prompt))
        first = await anext(mine)
        await mine.aclose()
        key = max(worker.joined_at_step)
        submitted, joined = worker.joined_at_step[key]
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
    finally:
        for stream in others:
            await stream.aclose()
        await worker.call(lambda: None)
        executor.shutdown(wait=True)
    return {"first_chunk_ms": (first - started) * 1000, "steps_waited": joined - submitted}


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def run(
    models: list[str], sizes: list[int], *, rounds: int, steps: int, tiny: bool = False,
    progress: Any = print,
) -> dict[str, Any]:  # fmt: skip
    import torch

    results: dict[str, Any] = {"threads": torch.get_num_threads(), "models": {}}
    for model in models:
        turbo = model == "turbo"
        progress(f"[t3_batch] building {model} T3 ({'tiny' if tiny else 'library size'})")
        t3, cond, prompt = build(model, tiny=tiny)
        parameters = sum(p.numel() for p in t3.parameters())
        per_round: list[dict[int, dict[str, float]]] = []
        arrivals: dict[str, list[dict[str, float]]] = {"alone": [], "behind_7": []}
        for round_index in range(rounds):
            figures = {}
            for size in sizes:
                figures[size] = throughput(t3, cond, prompt, turbo=turbo, size=size, steps=steps)
                progress(f"[t3_batch] {model} round {round_index + 1}/{rounds} B={size}: "
                         f"{figures[size]['tokens_per_s']:.1f} tokens/s, "
                         f"step {figures[size]['step_ms']:.0f} ms")  # fmt: skip
            per_round.append(figures)
            for label, speaking in (("alone", 0), ("behind_7", 7)):
                arrival = asyncio.run(newcomer(t3, cond, prompt, turbo=turbo, speaking=speaking))
                arrivals[label].append(arrival)
                progress(f"[t3_batch] {model} newcomer {label}: first chunk "
                         f"{arrival['first_chunk_ms']:.0f} ms, waited "
                         f"{arrival['steps_waited']} steps")  # fmt: skip
        ratios = {
            size: [f[size]["tokens_per_s"] / f[1]["tokens_per_s"] for f in per_round]
            for size in sizes
        }
        first_alone = [a["first_chunk_ms"] for a in arrivals["alone"]]
        first_behind = [a["first_chunk_ms"] for a in arrivals["behind_7"]]
        results["models"][model] = {
            "parameters": parameters,
            "by_batch": {
                str(size): {
                    "tokens_per_s": statistics.median(f[size]["tokens_per_s"] for f in per_round),
                    "step_ms": statistics.median(f[size]["step_ms"] for f in per_round),
                    "ratio_to_1": statistics.median(ratios[size]),
                    "ratio_to_1_by_round": ratios[size],
                }
                for size in sizes
            },
            "newcomer": {
                "first_chunk_ms_alone": statistics.median(first_alone),
                "first_chunk_ms_behind_7": statistics.median(first_behind),
                "max_steps_waited_behind_7": max(a["steps_waited"] for a in arrivals["behind_7"]),
                "rounds": arrivals,
            },
        }
    return results


def table(results: dict[str, Any]) -> str:
    lines = ["| model | B | tokens/s | step ms | × B=1 |", "|---|---|---|---|---|"]
    for model, figures in results["models"].items():
        for size, row in figures["by_batch"].items():
            lines.append(f"| {model} | {size} | {row['tokens_per_s']:.1f} | "
                         f"{row['step_ms']:.0f} | {row['ratio_to_1']:.2f} |")  # fmt: skip
    lines += ["", "| model | first chunk alone | behind 7 speaking | steps waited (max) |",
              "|---|---|---|---|"]  # fmt: skip
    for model, figures in results["models"].items():
        new = figures["newcomer"]
        lines.append(f"| {model} | {new['first_chunk_ms_alone']:.0f} ms | "
                     f"{new['first_chunk_ms_behind_7']:.0f} ms | "
                     f"{new['max_steps_waited_behind_7']} |")  # fmt: skip
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    from loadtest.report import pyplot, save_figure

    figure, axis = pyplot().subplots(figsize=(6.4, 4.0))
    for model, figures in results["models"].items():
        sizes = [int(size) for size in figures["by_batch"]]
        rates = [row["tokens_per_s"] for row in figures["by_batch"].values()]
        axis.plot(sizes, rates, marker="o", label=f"{model} T3, batched")
        axis.plot(sizes, [rates[0]] * len(sizes), linestyle=":", color=axis.lines[-1].get_color(),
                  label=f"{model} T3, one at a time")  # fmt: skip
    axis.set_xlabel("utterances decoding together (B)")
    axis.set_ylabel("speech tokens per second (25 = real time for one call)")
    axis.set_xscale("log", base=2)
    axis.set_title("Chatterbox T3 on this CPU, random weights, library sizes")
    axis.legend()
    axis.grid(True, alpha=0.3)
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default="standard,turbo")
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="2-layer models (a smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = sorted({int(size) for size in args.sizes.split(",")} | {1})
    models = [model for model in args.models.split(",") if model]
    if any(model not in ("standard", "turbo") for model in models) or args.rounds < 1:
        parser.error("--models takes standard and/or turbo; --rounds must be >= 1")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    results = run(models, sizes, rounds=args.rounds, steps=args.steps, tiny=args.tiny,
                  progress=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    results["command"] = "python -m loadtest.t3_batch " + " ".join(argv or sys.argv[1:])
    print(table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot is not None:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
