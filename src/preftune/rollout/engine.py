"""The rollout engine: every command that samples (generate, bon, eval, ppo, demo) goes through it.

`RolloutEngine(model, tokenizer)` is built once per model; `engine.generate(prompt_ids, n, params)`
samples `n` completions per prompt and returns them with the per-token log-probs of the tempered
distribution. After an optimizer step, `engine.load_weights(model)` refreshes the engine's copy of
the weights (LoRA adapters merged), as vLLM-backed trainers push weights after each update.

Backends:
- `slots` (Llama-family models, the default where it applies): continuous batching over a
  preallocated slot KV cache (`llama_decoder.py`). A row that ends at EOS frees its slot, and
  waiting prompts are admitted in groups, prefilled once per prompt and copied into their `n`
  slots (the prompt is computed once, not n times).
- `hf`: transformers' `generate` in fixed batches of `batch_size` sequences: any architecture, and
  the path preftune used before this engine (kept as the benchmark's baseline).
- `vllm`: vLLM on CUDA (`rollout/vllm_backend.py`, extra `[gpu]`).

Precision `auto` picks bf16 where the hardware runs it fast (CUDA, or a CPU with bf16 units per
/proc/cpuinfo) and fp32 elsewhere, by the same rule as the trainers (`preftune/precision.py`);
`describe()` says what was chosen and why.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from ..precision import PRECISIONS, choose_precision
from . import llama_decoder
from .progress import RolloutProgress
from .sampling import SamplingParams, sample_next

BACKENDS = ("auto", "slots", "hf", "vllm")
# Once no prompt waits and at most half the decoded rows still run, move them together. Below
# this many rows a step costs too little for the copy to pay.
COMPACT_MIN_ROWS = 8


@dataclass
class RolloutResult:
    """`n` completions per prompt, each up to and including its EOS when it reached one."""

    prompt_ids: list[list[int]]  # [prompt]
    completion_ids: list[list[list[int]]]  # [prompt][sample][token]
    logprobs: list[list[list[float]]]  # [prompt][sample][token]: log_softmax(logits / T)[token]
    finished: list[list[bool]]  # [prompt][sample]: closed by EOS (not cut at max_new_tokens)
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)


class RolloutEngine:
    """Samples completions for token-id prompts from one model; see the module note."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        backend: str = "auto",
        precision: str = "auto",
        max_slots: int = 128,
        token_budget: int = 262_144,
        batch_size: int = 8,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"rollout engine must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"rollout precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if max_slots < 1 or token_budget < 1 or batch_size < 1:
            raise ValueError("max_slots, token_budget and batch_size must be at least 1")
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.precision, self._precision_reason = choose_precision(self.device, precision)
        if backend == "auto":
            backend = "slots" if llama_decoder.is_supported(model) else "hf"
        if backend == "slots" and not llama_decoder.is_supported(model):
            raise ValueError(
                f"rollout engine 'slots' supports Llama-architecture models; this one is "
                f"{type(model).__name__}. Use --rollout-engine hf"
            )
        self.backend = backend
        self.max_slots, self.token_budget, self.batch_size = max_slots, token_budget, batch_size
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        if backend == "slots":
            self._decoder = llama_decoder.LlamaDecoder(model, dtype)
        elif backend == "vllm":
            from .vllm_backend import VLLMBackend

            self._vllm = VLLMBackend(model, tokenizer, self.precision)
        else:
            self._model = model

    def describe(self) -> str:
        return f"rollout engine={self.backend} precision={self.precision} ({self._precision_reason})"

    def load_weights(self, model) -> None:
        """Refresh the engine's weights from `model` (call after each optimizer step)."""
        if self.backend == "slots":
            self._decoder.load(model)
        elif self.backend == "vllm":
            self._vllm.load_weights(model)
        else:
            self._model = model

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        params: SamplingParams,
        progress: RolloutProgress | None = None,
    ) -> RolloutResult:
        if n < 1:
            raise ValueError(f"n (samples per prompt) must be at least 1, got {n}")
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("generate needs at least one prompt, and every prompt at least one token")
        start = time.perf_counter()
        if self.backend == "slots":
            completions, logprobs = self._generate_slots(prompt_ids, n, params, progress)
        elif self.backend == "vllm":
            completions, logprobs = self._vllm.generate(prompt_ids, n, params)
        else:
            from .hf_generate import generate_hf

            completions, logprobs = generate_hf(
                self._model, prompt_ids, n, params, self.batch_size, self.pad_id, self.eos_ids, self.precision, progress
            )  # fmt: skip
        finished = [[bool(c) and c[-1] in self.eos_ids for c in per] for per in completions]
        new_tokens = sum(len(c) for per in completions for c in per)
        return RolloutResult([list(p) for p in prompt_ids], completions, logprobs, finished, new_tokens,
                             time.perf_counter() - start)  # fmt: skip

    # ---- continuous batching over slots -----------------------------------------------------------

    @torch.no_grad()
    def _generate_slots(self, prompt_ids, n, params: SamplingParams, progress):
        decoder, device = self._decoder, self.device
        max_len = max(len(p) for p in prompt_ids) + params.max_new_tokens
        total = len(prompt_ids) * n
        slots = max(n, min(self.max_slots, total, self.token_budget // max_len))
        cache = decoder.new_cache(slots, max_len)
        rope = decoder.rope_table(max_len)
        generator = torch.Generator(device=device).manual_seed(params.seed)
        completions = [[[] for _ in range(n)] for _ in prompt_ids]
        logprobs = [[[] for _ in range(n)] for _ in prompt_ids]
        waiting = deque(range(len(prompt_ids)))
        owner: list[tuple[int, int] | None] = [None] * slots  # slot -> (prompt, sample)
        position = [0] * slots  # where the slot's next token goes (= its current length)
        next_token = [0] * slots
        # Admit in groups: a prefill of one prompt is a matmul of ~40 rows, far below the CPU's
        # peak, so wait until a quarter of the slots are free (or nothing is running).
        admit_at = max(n, slots // 4)

        def record(slot_ids: list[int], tokens: torch.Tensor, token_logprobs: torch.Tensor) -> None:
            for slot, token, logprob in zip(slot_ids, tokens.tolist(), token_logprobs.tolist(), strict=True):
                prompt, sample = owner[slot]
                completions[prompt][sample].append(token)
                logprobs[prompt][sample].append(logprob)
                if token in self.eos_ids or len(completions[prompt][sample]) >= params.max_new_tokens:
                    owner[slot] = None
                    if progress:
                        progress.sequence_done(len(completions[prompt][sample]))
                else:
                    next_token[slot] = token
            if progress:
                progress.tokens(len(slot_ids))

        while waiting or any(o is not None for o in owner):
            free = [s for s in range(slots) if owner[s] is None]
            if waiting and len(free) >= n and (len(free) >= admit_at or len(free) == slots):
                group = [waiting.popleft() for _ in range(min(len(waiting), len(free) // n))]
                logits, kv = decoder.prefill(*_right_pad(prompt_ids, group, self.pad_id, device), rope)
                slot_ids = free[: len(group) * n]
                source = torch.arange(len(group), device=device).repeat_interleave(n)
                width = kv[0][0].shape[2]
                index = torch.tensor(slot_ids, device=device)
                for (k_cache, v_cache), (k, v) in zip(cache, kv, strict=True):
                    k_cache[index, :, :width] = k[source]
                    v_cache[index, :, :width] = v[source]
                for j, slot in enumerate(slot_ids):
                    owner[slot] = (group[j // n], j % n)
                    position[slot] = len(prompt_ids[group[j // n]])
                tokens, token_logprobs = sample_next(logits[source], params, generator)
                record(slot_ids, tokens, token_logprobs)
                continue
            active = [s for s in range(slots) if owner[s] is not None]
            if not waiting and len(active) <= (active[-1] + 1) // 2 and active[-1] >= COMPACT_MIN_ROWS:
                _compact(cache, active, owner, position, next_token)
                active = list(range(len(active)))
            rows = active[-1] + 1
            tokens_in = torch.tensor([next_token[s] if owner[s] else 0 for s in range(rows)], device=device)
            where = [position[s] if owner[s] else 0 for s in range(rows)]
            logits = decoder.decode(tokens_in, torch.tensor(where, device=device), max(where) + 1, cache, rope)
            if len(active) < rows:  # some rows in 0..rows-1 are idle: draw for the running ones only
                logits = logits[torch.tensor(active, device=device)]
            tokens, token_logprobs = sample_next(logits, params, generator)
            for slot in active:
                position[slot] += 1
            record(active, tokens, token_logprobs)
        return completions, logprobs


def _right_pad(prompt_ids, group: list[int], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [prompt_ids[i] for i in group]
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids.to(device), torch.tensor([len(r) for r in rows], device=device)


def _compact(cache, active: list[int], owner: list, position: list[int], next_token: list[int]) -> None:
    """Move the running rows to slots 0..m-1, so decode steps stop computing the idle ones."""
    index = torch.tensor(active, device=cache[0][0].device)
    width = max(position[s] for s in active) + 1
    for k_cache, v_cache in cache:
        k_cache[: len(active), :, :width] = k_cache[index, :, :width]
        v_cache[: len(active), :, :width] = v_cache[index, :, :width]
    moved = [(owner[s], position[s], next_token[s]) for s in active]
    for slot in range(len(owner)):
        owner[slot] = None
    for slot, (who, where, token) in enumerate(moved):
        owner[slot], position[slot], next_token[slot] = who, where, token


def _eos_ids(model, tokenizer) -> set[int]:
    """The tokens that end a completion: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if not ids:
        raise ValueError("the tokenizer has no EOS token, so completions could never end")
    return ids
