"""Batched sampling of completions with the KV cache (transformers' `generate`), with progress.

Prompts go through `data/tokenize.py` like everything else, are left-padded (so every row's next
token sits at the same position), and the attention mask comes from the prompt lengths, never
from comparing ids with the pad id (pad == EOS for SmolLM2). Sampling is seeded; each row stops
at its EOS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .data.schema import Message
from .data.tokenize import PairTokenizer


@dataclass
class Generations:
    texts: list[list[str]]  # [prompt][sample]
    prompt_ids: list[list[int]]  # [prompt]
    completion_ids: list[list[list[int]]]  # [prompt][sample], up to and including EOS if reached
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)


class _StepCounter:
    """A `generate` streamer that counts sampled tokens, to drive a progress bar."""

    def __init__(self, on_step: Callable[[int], None]):
        self.on_step = on_step
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the first call carries the prompt ids, not a sampled step
            self.seen_prompt = True
            return
        self.on_step(1)

    def end(self) -> None:
        pass


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and the attention mask built from lengths."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
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
) -> Generations:
    """Sample `n` completions for each prompt.

    `batch_size` counts sequences (prompt x sample) per `generate` call. `progress(done, total)`
    is called after each batch with counts of prompts; `show_progress` draws a rich bar with
    tokens/s instead.
    """
    if n < 1 or max_new_tokens < 1:
        raise ValueError("n and max_new_tokens must be at least 1")
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (sampling); use a small value for near-greedy output")
    pair_tokenizer = PairTokenizer(tokenizer, max_length=max_prompt_length + max_new_tokens, max_prompt_length=max_prompt_length)
    prompt_ids = [pair_tokenizer.encode_prompt(messages)[0] for messages in prompts]
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    prompts_per_batch = max(1, batch_size // n)
    texts: list[list[str]] = []
    completions: list[list[list[int]]] = []
    new_tokens = 0
    start = time.perf_counter()

    bar = _progress_bar(len(prompts) * n * max_new_tokens) if show_progress else None
    was_training = model.training
    model.eval()
    try:
        # Seed once for the whole call, without disturbing the caller's global RNG stream.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for first in range(0, len(prompts), prompts_per_batch):
                rows = prompt_ids[first : first + prompts_per_batch]
                ids, mask = left_pad(rows, pad_id)
                step_size = len(rows) * n  # sequences advanced by one sampling step
                streamer = _StepCounter(lambda k, size=step_size: bar.advance(size * k)) if bar else None
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=n,
                    eos_token_id=eos_id,
                    pad_token_id=pad_id,
                    streamer=streamer,
                )
                sampled = out[:, ids.shape[1] :].tolist()
                for p in range(len(rows)):
                    per_prompt = [_cut_at_eos(sampled[p * n + k], eos_id) for k in range(n)]
                    new_tokens += sum(len(c) for c in per_prompt)
                    completions.append(per_prompt)
                    texts.append([tokenizer.decode(c, skip_special_tokens=True) for c in per_prompt])
                if bar:  # rows that stopped at EOS early still used up their share of the budget
                    done_budget = (first + len(rows)) * n * max_new_tokens
                    bar.update(done_budget, new_tokens, time.perf_counter() - start)
                if progress:
                    progress(min(first + prompts_per_batch, len(prompts)), len(prompts))
    finally:
        model.train(was_training)
        if bar:
            bar.close()
    return Generations(texts, prompt_ids, completions, new_tokens, time.perf_counter() - start)


def _cut_at_eos(tokens: list[int], eos_id: int) -> list[int]:
    """Keep tokens up to and including the first EOS; `generate` pads finished rows after it."""
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens


class _progress_bar:
    """A rich bar over the sampling budget, showing tokens/s; finished rows end early."""

    def __init__(self, total_steps: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("generating"),
            BarColumn(),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("generate", total=total_steps, rate="-")
        self.progress.start()

    def advance(self, k: int) -> None:
        self.progress.advance(self.task, k)

    def update(self, completed: int, tokens: int, seconds: float) -> None:
        self.progress.update(self.task, completed=completed, rate=f"{tokens / max(seconds, 1e-9):.1f}")

    def close(self) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[0].total)
        self.progress.stop()
