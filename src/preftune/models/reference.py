"""Reference-model log-probs for DPO and the KL penalty, three ways:

- `copy`: a frozen deep copy of the starting policy (simple; twice the weights in memory);
- `adapter`: for a LoRA policy, the same model with its adapter disabled (no second copy);
- `precompute`: one pass over the data before training, cached on disk. The cache key covers the
  reference weights, the pairs and the tokenization settings, so a cache is reused across runs and
  rebuilt when any of them changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data.batching import collate_pairs
from ..data.tokenize import TokenizedPair
from .logprobs import pair_logprobs

REFERENCE_MODES = ("precompute", "copy", "adapter")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order: identifies the reference weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reference_cache_key(model_fingerprint: str, pairs: Sequence[TokenizedPair], settings: dict) -> str:
    """Key = reference weights + the tokenized pairs (which carry the data) + tokenization settings."""
    digest = hashlib.sha256(model_fingerprint.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for pair in pairs:
        digest.update(json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]).encode())
    return digest.hexdigest()[:32]


@torch.no_grad()
def compute_pair_logprobs(
    model,
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    forward_context: Callable = torch.no_grad,
    on_batch: Callable[[int], None] | None = None,
    *,
    layout: str = "padded",
    pack_length: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-prob sums [N] for every pair, in order, in eval mode.

    `layout`/`pack_length` as in `data.batching.collate_pairs`. With `fast`, pairs go through in
    order of length (rows then pack with little padding) and come back in the input order.
    """
    was_training = model.training
    model.eval()
    order = list(range(len(pairs)))
    if layout == "fast":
        order.sort(key=lambda i: len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids))
    chosen = torch.empty(len(pairs), dtype=torch.float32)
    rejected = torch.empty(len(pairs), dtype=torch.float32)
    try:
        for start in range(0, len(pairs), batch_size):
            indices = order[start : start + batch_size]
            batch = collate_pairs([pairs[i] for i in indices], pad_id, layout, pack_length).to(device)
            with forward_context():
                out = pair_logprobs(model, batch)
            chosen[indices] = out["chosen_logps"].float().cpu()
            rejected[indices] = out["rejected_logps"].float().cpu()
            if on_batch:
                on_batch(batch.num_pairs)
    finally:
        model.train(was_training)
    return chosen, rejected


class PrecomputedReference:
    """Reference log-probs looked up by example index."""

    def __init__(self, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor):
        self.chosen_logps, self.rejected_logps = chosen_logps, rejected_logps

    def __call__(self, batch, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        device = batch.sequences.device
        return self.chosen_logps[indices].to(device), self.rejected_logps[indices].to(device)


class LiveReference:
    """Reference log-probs computed per batch, from a frozen copy or the adapter-disabled policy."""

    def __init__(self, model, use_disabled_adapter: bool, autocast_context: Callable):
        self.model, self.use_disabled_adapter, self.autocast_context = model, use_disabled_adapter, autocast_context

    @torch.no_grad()
    def __call__(self, batch, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast_context():
            if self.use_disabled_adapter:
                with self.model.disable_adapter():
                    out = pair_logprobs(self.model, batch)
            else:
                out = pair_logprobs(self.model, batch)
        return out["chosen_logps"].detach(), out["rejected_logps"].detach()


def load_or_precompute(
    cache_dir: Path,
    key: str,
    compute: Callable[[], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[PrecomputedReference, bool]:
    """Return the cached reference for `key`, computing and saving it when absent. (ref, was_cached)"""
    path = cache_dir / f"{key}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu")
        return PrecomputedReference(saved["chosen_logps"], saved["rejected_logps"]), True
    chosen, rejected = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: ranks on several nodes may race
    torch.save({"chosen_logps": chosen, "rejected_logps": rejected}, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry
    return PrecomputedReference(chosen, rejected), False
