"""What every training loop shares: precision, optimizer and schedule, data order, checkpoints,
resume, signals, divergence checks and the progress bar. No loop logic lives here.
"""

from __future__ import annotations

import math
import random
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..config import DEVICE, ConfigError, TrainConfig, save_config
from ..models.load import atomic_folder, cache_dir, write_pretrained
from ..precision import autocast, choose_precision  # noqa: F401  (the loops' one import of both)
from . import distributed

# ---- device and precision ---------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    """The training device; on CPU, also `keep_freed_cpu_memory()`."""
    if not DEVICE.accepts(name):  # commands outside the config layer (score, eval) pass names here too
        raise ConfigError("--device", 0, DEVICE.reason.format(value=name))
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)
    )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", 0, f"{name}: no CUDA device is available here (use --device cpu or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device", 0, "mps: no Apple GPU is available here (use --device cpu or auto)")
    if device.type == "cpu":
        keep_freed_cpu_memory()
    return device


def keep_freed_cpu_memory() -> bool:
    """Ask glibc's allocator to reuse freed memory instead of giving it back to the OS.

    By default glibc serves each allocation above a threshold (128 KB, rising with use up to
    32 MB) with a fresh `mmap` and unmaps it on free, so a training step faults in (and the kernel
    zeroes) its activations and logit chunks all over again. On this project's 2-core CPU that was
    a quarter of an early SmolLM2 DPO step (36.4 s -> 27.3 s in bf16) and 3% of a later one. With
    mmap off and a high trim threshold, freed blocks stay in the heap for the next step, at the
    cost of holding the step's peak between steps. Process-wide and idempotent; returns False
    where the C library is not glibc (macOS, musl), which is then left alone.
    """
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h> parameter numbers
            _allocator_tuned = bool(libc.mallopt(m_mmap_max, 0)) and bool(
                libc.mallopt(m_trim_threshold, 1 << 30)
            )
        except (OSError, AttributeError):
            pass
    return _allocator_tuned


_allocator_tuned: bool | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---- optimizer and schedule -------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(
    optimizer, kind: str, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0, then linear or cosine decay to 0 (or constant) at `total_steps`."""
    if kind not in ("linear", "cosine", "constant"):
        raise ValueError(f"--scheduler must be linear, cosine or constant, got {kind!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps_of(config: TrainConfig, total_steps: int) -> int:
    return config.warmup_steps or int(round(config.warmup_ratio * total_steps))


def grad_norm_and_clip(model: torch.nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


# ---- data order -------------------------------------------------------------------------------


class DataOrder:
    """A reproducible stream of example indices: one seeded permutation per epoch.

    The position in the stream is all that resume needs: the same seed and position give the
    same next batch, so an interrupted run continues exactly where it stopped.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        if size <= 0:
            raise ValueError("no training examples")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.position = 0

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def take(self, count: int) -> list[int]:
        indices = []
        while len(indices) < count:
            epoch, offset = divmod(self.position, self.size)
            order = self._epoch_order(epoch)
            chunk = order[offset : offset + count - len(indices)]
            indices += chunk
            self.position += len(chunk)
        return indices

    @property
    def epoch(self) -> float:
        return self.position / self.size


def total_steps_of(config: TrainConfig, num_examples: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    per_step = config.batch_size * config.grad_accum
    return max(1, math.ceil(config.epochs * num_examples / per_step))


# ---- checkpoints ------------------------------------------------------------------------------


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model,
    tokenizer,
    optimizer,
    scheduler,
    data_order: DataOrder,
    config: Any,
    keep_last: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """checkpoints/step-N/: a loadable HF model plus `trainer_state.pt` for exact resume.

    Under torchrun every rank calls this and rank 0 writes. With FSDP the weights are gathered to
    rank 0 for the HF model, and weights plus optimizer state are also written sharded, by every
    rank, into `distributed/` (torch.distributed.checkpoint), which resumes on any process count.
    """
    final = Path(out_dir) / "checkpoints" / f"step-{step}"
    sharded = distributed.is_sharded(model)
    plain = distributed.unsharded_model(model)  # the model itself, unless FSDP sharded it
    if not sharded:  # (FSDP: each rank holds a shard; the gradient check already guards those)
        check_finite_weights(model, step, out_dir)
    shards = final.parent / f".{final.name}.shards"
    if sharded:
        if distributed.is_main():
            shutil.rmtree(shards, ignore_errors=True)  # left by a crash during an earlier save
        distributed.barrier()
        distributed.save_sharded(shards, model, optimizer)
    if distributed.is_main():
        with atomic_folder(final) as tmp:
            write_pretrained(plain, tokenizer, tmp, final_folder=final)
            save_config(config, tmp / "preftune.yaml")
            state = {
                "step": step,
                "scheduler": scheduler.state_dict(),
                "data_position": data_order.position,
                "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
                "extra": extra or {},
            }
            if sharded:
                shards.rename(tmp / "distributed")
            else:
                state["optimizer"] = optimizer.state_dict()
                state["trainable"] = {
                    n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad
                }
            if torch.cuda.is_available():
                state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(state, tmp / "trainer_state.pt")
        for old in checkpoint_dirs(out_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()  # nobody reads or resumes a checkpoint before it is complete
    return final


def restore_checkpoint(
    checkpoint: Path, model, optimizer, scheduler, data_order: DataOrder
) -> dict[str, Any]:
    """Load trainable weights, optimizer, scheduler, data position and RNG states; returns state.

    A checkpoint written under FSDP (`distributed/`) loads into any number of processes, sharded
    or not; one written without FSDP loads into an FSDP-sharded model too."""
    state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
    if (checkpoint / "distributed").is_dir():
        distributed.load_sharded(checkpoint / "distributed", model, optimizer)
    elif distributed.is_sharded(model):
        distributed.load_full_into_sharded(model, optimizer, state["trainable"], state["optimizer"])
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value.to(params[name].device))
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    data_order.position = state["data_position"]
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state


def resume_latest(out_dir: Path, model, optimizer, scheduler, data_order: DataOrder, log) -> tuple[int, dict]:
    """Restore the newest checkpoint; drop metrics logged after it. Returns (step, extra state)."""
    found = checkpoint_dirs(out_dir)
    if not found:
        raise ValueError(f"--resume: no checkpoint under {Path(out_dir) / 'checkpoints'}")
    state = restore_checkpoint(found[-1], model, optimizer, scheduler, data_order)
    log.truncate_after(state["step"])
    print(f"resumed from {found[-1]} (step {state['step']})", file=sys.stderr)
    return state["step"], state.get("extra", {})


def reference_cache_dir() -> Path:
    return cache_dir() / "reference_logps"


# ---- signals and divergence -------------------------------------------------------------------


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def _diverged(step: int, what: str, out_dir: str | Path) -> TrainingDiverged:
    # Every checkpoint on disk passed `check_finite_weights` before it was written, so the newest
    # one really is the last good one.
    last = checkpoint_dirs(out_dir)
    where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"
    return TrainingDiverged(f"step {step}: {what}; stopping ({where}). Try a lower --lr or check the data.")


def check_finite(loss: torch.Tensor, step: int, out_dir: str | Path) -> None:
    """Before backward: a NaN or infinite loss stops the run."""
    if not torch.isfinite(loss).all():
        raise _diverged(step, f"loss is {loss.item()}", out_dir)


def check_finite_gradients(grad_norm: float, step: int, out_dir: str | Path) -> None:
    """Before `optimizer.step()`: a finite loss can still have a NaN or infinite gradient (weights
    blown up by a huge --lr), and one such step makes every weight NaN."""
    if not math.isfinite(grad_norm):
        raise _diverged(step, f"gradient norm is {grad_norm}", out_dir)


def check_finite_weights(model: torch.nn.Module, step: int, out_dir: str | Path) -> None:
    """Before a checkpoint is written: weights that overflowed are never saved as "good"."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if bad:
        raise _diverged(step, f"{len(bad)} weight tensors are not finite (first: {bad[0]})", out_dir)


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (then checkpoints, exits)."""

    def __init__(self):
        self.requested: str | None = None

    def _handler(self, signum, frame):
        if self.requested:  # a second signal: the user means it
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    @contextmanager
    def installed(self):
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for s in previous:
                signal.signal(s, self._handler)
        except ValueError:  # not the main thread (e.g. under a test runner's worker): no handlers
            previous = {}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def agree(self) -> None:
        """Under torchrun: once any rank has a signal, every rank stops after the same step (the
        checkpoint that follows is a collective). Call once per step, on every rank."""
        if distributed.any_rank(self.requested is not None) and self.requested is None:
            self.requested = "SIGTERM"


# ---- progress ---------------------------------------------------------------------------------


class TrainProgress:
    """A rich progress bar with the latest loss / accuracy and an ETA; silent when disabled."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, label: str = "train"):
        self.enabled = enabled
        self.started = time.perf_counter()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),  # stdout stays free for results (tables, JSON)
        )
        self.task = self.progress.add_task(label, total=total, completed=start, status="")
        self.progress.start()

    def update(self, step: int, status: dict[str, float]) -> None:
        if self.enabled:
            text = "  ".join(f"{k} {v:.4g}" for k, v in status.items() if v is not None)
            self.progress.update(self.task, completed=step, status=text)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
