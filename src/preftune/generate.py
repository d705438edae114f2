"""Sampling completions for chat prompts: tokenization in, texts out, the rollout engine between.

Prompts go through `data/tokenize.py` like everything else; `rollout.RolloutEngine` does the
sampling (continuous batching over a slot KV cache for Llama-family models, transformers'
`generate` for others, vLLM on CUDA when asked). Sampling is seeded; each row stops at its EOS.
Pass an `engine` to reuse one across calls (a trainer refreshes its weights after each update);
without one, each call builds one for `model`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from .data.schema import Message
from .data.tokenize import PairTokenizer
from .rollout import RolloutEngine, RolloutProgress, SamplingParams
from .rollout.hf_generate import left_pad  # noqa: F401  (re-exported: the left-padding helper)


@dataclass
class Generations:
    texts: list[list[str]]  # [prompt][sample]
    prompt_ids: list[list[int]]  # [prompt]
    completion_ids: list[list[list[int]]]  # [prompt][sample], up to and including EOS if reached
    new_tokens: int
    seconds: float
    logprobs: list[list[list[float]]] | None = None  # [prompt][sample][token], tempered distribution
    finished: list[list[bool]] | None = None  # [prompt][sample]: ended at EOS
    engine: str = ""  # which backend and precision sampled them (`RolloutEngine.describe()`)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)


def generate_completions(
    model,
    tokenizer,
    prompts: list[list[Message]],
    n: int = 1,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    max_prompt_length: int = 512,
    progress: Callable[[int, int], None] | None = None,
    show_progress: bool = False,
    engine: RolloutEngine | None = None,
    rollout_engine: str = "auto",
    precision: str = "auto",
    label: str = "generating",
) -> Generations:
    """Sample `n` completions for each prompt.

    `batch_size` counts sequences per call on the `hf` backend (the slot engine sizes its own
    batch). `progress(done, total)` is called with counts of finished sequences; `show_progress`
    reports to stderr: a bar on a terminal, a line every 15 s otherwise.
    """
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    if n < 1:
        raise ValueError("n must be at least 1")
    pair_tokenizer = PairTokenizer(tokenizer, max_length=max_prompt_length + max_new_tokens, max_prompt_length=max_prompt_length)
    prompt_ids = [pair_tokenizer.encode_prompt(messages)[0] for messages in prompts]
    if engine is None:
        engine = RolloutEngine(model, tokenizer, backend=rollout_engine, precision=precision, batch_size=batch_size)
    if show_progress:
        print(f"{label}: {engine.describe()}", file=sys.stderr, flush=True)
    reporter = None
    if show_progress or progress:
        reporter = _Reporter(label, len(prompts) * n, max_new_tokens, progress, show_progress)
    try:
        result = engine.generate(prompt_ids, n, params, reporter)
    finally:
        if reporter:
            reporter.close()
    texts = [[tokenizer.decode(c, skip_special_tokens=True) for c in per] for per in result.completion_ids]
    return Generations(texts, result.prompt_ids, result.completion_ids, result.new_tokens, result.seconds,
                       result.logprobs, result.finished, engine.describe())  # fmt: skip


class _Reporter(RolloutProgress):
    """stderr progress when asked, and the caller's `progress(done, total)` callback."""

    def __init__(self, label, sequences, max_new_tokens, callback, show: bool):
        super().__init__(label, sequences, max_new_tokens, stream=sys.stderr, live=sys.stderr.isatty() and show)
        self.callback, self.show = callback, show

    def _maybe_report(self) -> None:
        if self.show:
            super()._maybe_report()

    def sequence_done(self, length: int) -> None:
        super().sequence_done(length)
        if self.callback:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.show:
            super().close()
