"""One training run on several processes: torchrun's environment, DDP or FSDP2, the collectives.

    torchrun --nproc-per-node 4 -m preftune dpo ...          # one machine, 4 processes
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m preftune dpo ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `setup` reads them. Without
them (a plain `preftune dpo`) every function here is a no-op and a loop runs exactly as it always has.

What holds with N processes (docs/scaling.md has the rest):
- `--batch-size` (and ppo's `--rollout-batch`) is the *global* micro-batch. `DataOrder` hands every
  rank the same indices and each rank keeps its contiguous slice (`shard`), so the examples of a
  step are the single-process ones, a mean over pairs averages exactly across ranks, and a
  checkpoint resumes on any number of processes that divides the batch.
- `wrap_model` returns a module whose forward runs a function given at call time:
  `runner(fn, *args)` is `fn(*args)`. DDP and FSDP hook that module's forward, so a loop may reach
  the model by any path (the fast pair layout calls the trunk and the LM head separately, PPO calls
  the policy and a value model) and still get DDP's gradient all-reduce or FSDP's all-gathers.
- Metrics are averaged over ranks before logging (`all_reduce_metrics`): token counts add up, the
  extremes stay extremes. Only rank 0 writes the run folder.
- Every collective gives up after `--dist-timeout` seconds: a dead or hung worker ends the run
  with an error (`describe_failure` words it) instead of a hang.
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
import warnings
import weakref
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..losses.advantages import WHITEN_EPS
from ..losses.advantages import masked_whiten as local_masked_whiten

# Metrics combined by something other than the mean over ranks (names without an eval/ prefix).
SUMMED_METRICS = {"num_tokens"}
MINIMUM_METRICS = {"min_reward"}
MAXIMUM_METRICS = {"max_reward", "memory/peak_gb"}

# gloo and NCCL raise plain RuntimeErrors; these words in the message say where it came from.
_COLLECTIVE_ERROR_MARKERS = ("gloo", "NCCL", "ProcessGroup", "Timed out", "timed out", "Connection reset", "Connection closed")  # fmt: skip
_settings = {"timeout": None}
# FSDP-sharded model -> the same architecture on the meta device (no memory), kept to rebuild a
# plain model from the gathered weights for saving (`unsharded_model`).
_skeletons: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ---- process group ---------------------------------------------------------------------------


def setup(config) -> None:
    """Join torchrun's process group when WORLD_SIZE > 1, pin this rank's GPU, set CUDA's matmul
    precision, and reject settings that cannot work. Idempotent: a second call changes nothing."""
    from .common import pick_device

    device = pick_device(config.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.fsdp_offload and not config.fsdp:
        raise ConfigError("--fsdp-offload", 0, "needs --fsdp")
    if config.fsdp_offload and device.type != "cuda":
        raise ConfigError("--fsdp-offload", 0, "moves sharded state from GPU to CPU memory; it needs --device cuda")
    if config.fsdp and config.lora:
        raise ConfigError("--fsdp", 0, "not supported with --lora (the adapter's state is small: use DDP, the default)")
    if device.type == "cuda":
        # TF32: fp32 matmuls on tensor cores with a 10-bit mantissa (Ampere and newer); bf16
        # autocast covers most of the work anyway, this speeds up what stays in fp32.
        torch.set_float32_matmul_precision("high" if config.tf32 else "highest")
    if world == 1:
        if config.fsdp and not _settings.get("told"):
            _settings["told"] = True
            print("note: --fsdp in a single process: nothing to shard, training as usual", file=sys.stderr)
        return
    for flag in ("batch_size", "rollout_batch"):
        size = getattr(config, flag, None)
        if size is not None and size % world:
            raise ConfigError("--" + flag.replace("_", "-"), 0,
                              f"{size} is the global batch and must split evenly over {world} processes")  # fmt: skip
    if dist.is_initialized():
        return
    if device.type == "cuda":
        # More processes than GPUs (a smoke test on one GPU) share them round-robin; that takes
        # --dist-backend gloo, since NCCL refuses two ranks on one GPU.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    backend = {"auto": "nccl" if device.type == "cuda" else "gloo"}.get(config.dist_backend, config.dist_backend)
    if backend not in ("nccl", "gloo"):
        raise ConfigError("--dist-backend", 0, f"must be auto, nccl or gloo, got {backend!r}")
    if config.dist_timeout <= 0:
        raise ConfigError("--dist-timeout", 0, "must be > 0 seconds")
    dist.init_process_group(backend, timeout=timedelta(seconds=config.dist_timeout))
    _settings["timeout"] = config.dist_timeout
    if rank() == 0:
        print(f"distributed: {world} processes, backend {backend}, {'fsdp' if config.fsdp else 'ddp'}, "
              f"collective timeout {config.dist_timeout:g} s", file=sys.stderr)  # fmt: skip


def shutdown() -> None:
    """Leave the process group (after a finished run; a failed one just exits)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block before the others (who then find the cache files it wrote)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def describe_failure(err: BaseException) -> str | None:
    """One line for an error from a collective (a peer died or hung), or None for anything else."""
    if world_size() == 1:
        return None
    text = str(err)
    from_backend = isinstance(err, RuntimeError) and any(m in text for m in _COLLECTIVE_ERROR_MARKERS)
    if not isinstance(err, dist.DistError) and not from_backend:
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    timeout = _settings["timeout"]
    limit = f"--dist-timeout {timeout:g} s" if timeout is not None else "the process group's timeout"
    return (f"rank {rank()} of {world_size()}: a collective operation failed ({first}). Another worker "
            f"probably died or stopped responding; its own output says why. Collectives give up after "
            f"{limit}.")  # fmt: skip


# ---- data and metrics -------------------------------------------------------------------------


def shard(items: list) -> list:
    """This rank's contiguous slice of a global batch (every rank holds the same `items`)."""
    world = world_size()
    if world == 1:
        return items
    if len(items) % world:
        raise ValueError(f"a batch of {len(items)} does not split evenly over {world} processes")
    size = len(items) // world
    return items[rank() * size : (rank() + 1) * size]


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The mean of each metric over ranks (sum for token counts, min/max for extremes), on every rank.

    Every rank must pass the same names. One all-gather, in float64, whatever the number of metrics.
    """
    world = world_size()
    if world == 1:
        return metrics
    names = list(metrics)
    local = torch.tensor([float(metrics[n]) for n in names], dtype=torch.float64, device=_comm_device())
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    table = torch.stack(gathered).cpu()
    reduced = {}
    for column, name in enumerate(names):
        values, base = table[:, column], name.removeprefix("eval/").removeprefix("train/")
        if base in SUMMED_METRICS:
            value = float(values.sum())
        elif base in MINIMUM_METRICS:
            value = float(values.min())
        elif base in MAXIMUM_METRICS:
            value = float(values.max())
        else:
            value = float(values.mean())
        was_int = isinstance(metrics[name], int) and not isinstance(metrics[name], bool)
        reduced[name] = int(value) if was_int and value.is_integer() else value
    return reduced


def mean_over_ranks(value: float) -> float:
    return all_reduce_metrics({"value": value})["value"]


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (e.g. a signal that reached one worker)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([float(flag)], device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def per_rank_share(total: torch.Tensor) -> torch.Tensor:
    """sum over ranks of `total` / world size. A rank's sum divided by it, averaged over ranks by
    DDP, is the global sum over the global count: a token-weighted mean stays exact."""
    world = world_size()
    if world == 1:
        return total
    summed = total.detach().to(_comm_device(), torch.float64)
    dist.all_reduce(summed)
    return (summed / world).to(total.device, total.dtype if total.is_floating_point() else torch.float32)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`losses.advantages.masked_whiten` with the mean and variance of all ranks' values together."""
    if world_size() == 1:
        return local_masked_whiten(values, mask, shift_mean)
    keep = mask.bool()
    zeros = torch.zeros_like(values)
    sums = torch.stack([torch.where(keep, values, zeros).sum(), keep.sum().to(values.dtype)]).double()
    sums = sums.to(_comm_device())
    dist.all_reduce(sums)
    count, mean = sums[1], sums[0] / sums[1]
    squares = torch.where(keep, values.double() - mean.to(values.device), zeros.double()).pow(2).sum()
    squares = squares.to(_comm_device())
    dist.all_reduce(squares)
    variance = (squares / count) * count / (count - 1)  # unbiased, as masked_var
    mean, variance = mean.to(values.device, values.dtype), variance.to(values.device, values.dtype)
    whitened = (values - mean) * torch.rsqrt(variance + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(keep, whitened, zeros)


def memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak device memory so far (GiB); nothing on CPU."""
    if device.type != "cuda":
        return {}
    return {"memory/peak_gb": torch.cuda.max_memory_allocated(device) / 2**30}


# ---- the model --------------------------------------------------------------------------------


class ModelRunner(torch.nn.Module):
    """`runner(fn, *args)` runs `fn(*args)` as this module's forward.

    DDP prepares its gradient all-reduce, and FSDP all-gathers the parameters it manages at the
    root, in the forward of the module they wrap. Wrapping this one lets `fn` reach `model` by any
    path (trunk and LM head separately, a policy and a value model) and still be seen by both.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (the classes its `_no_split_modules` names)."""
    names = set()
    for module in model.modules():
        listed = getattr(module, "_no_split_modules", None)
        if isinstance(listed, list | tuple | set):
            names.update(listed)
    return [m for m in model.modules() if type(m).__name__ in names]


def wrap_model(model: torch.nn.Module, config, device: torch.device, precision: str) -> torch.nn.Module:
    """`model` inside a `ModelRunner`: plain in one process, DDP (default) or FSDP2 (--fsdp) under
    torchrun. Call before making the optimizer: FSDP replaces the parameters with sharded ones."""
    if config.compile:
        # Block by block: each compiles once and is reused by every layer, whatever path reaches it.
        for block in transformer_blocks(model):
            block.compile()
    runner = ModelRunner(model)
    if world_size() == 1:
        return runner
    if not config.fsdp:
        # Replicas start equal (DDP broadcasts rank 0's weights); buffers (rotary tables) are
        # constants, so no per-forward broadcast. (torch 2.13 renamed the option.)
        ddp = torch.nn.parallel.DistributedDataParallel
        renamed = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        return ddp(runner, **({"forward_sync_buffers": False} if renamed else {"broadcast_buffers": False}))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError("--fsdp", 0, f"found no transformer blocks to shard in {type(model).__name__}")
    from ..data import batching

    batching.SINGLE_GROUP = True  # one model call per batch on every rank (see batching.SINGLE_GROUP)
    _skeletons[model] = _meta_copy(model)  # before sharding: the plain architecture, for saving
    mesh = init_device_mesh(device.type, (world_size(),))
    options = {
        "mesh": mesh,
        # bf16 compute with fp32 master weights and fp32 gradient reduction.
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16" else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if config.fsdp_offload else OffloadPolicy(),
    }  # fmt: skip
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(runner, **options)  # the root: embeddings, final norm, LM head / scalar head
    # FSDP warns when a forward returns views (chosen/rejected halves of one log-prob vector); the
    # loops never modify those in place, which is what the warning is about.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPModelRunner\) returned a view")
    return runner


def sync_gradients(runner: torch.nn.Module, enabled: bool) -> None:
    """Whether the next backward pass reduces gradients across ranks: off on all but the last
    micro-batch of a step (the accumulated gradient is reduced once)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(runner, torch.nn.parallel.DistributedDataParallel):
        runner.require_backward_grad_sync = enabled  # what DDP.no_sync() toggles
    elif isinstance(runner, FSDPModule):
        runner.set_requires_gradient_sync(enabled)


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy whose parameters live on the meta device (tied ones stay tied); buffers copied."""
    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}  # fmt: skip
    return copy.deepcopy(model, memo)


def is_sharded(model: torch.nn.Module) -> bool:
    return model in _skeletons


def unsharded_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """`model` with all its weights, as a plain module: itself unless FSDP-sharded; then a CPU copy
    on rank 0 and None elsewhere. Under FSDP every rank must call it (it gathers the weights)."""
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    plain = _meta_copy(_skeletons[model])
    plain.load_state_dict(full, assign=True)
    if hasattr(plain, "tie_weights"):  # assign=True replaced the shared tensor with two copies
        plain.tie_weights()
    return plain


# ---- sharded checkpoints (FSDP) -----------------------------------------------------------------


def save_sharded(folder, model: torch.nn.Module, optimizer) -> None:
    """Weights and optimizer state with torch.distributed.checkpoint: each rank writes its shards
    in parallel, and any number of processes (one included) can read them back (`load_sharded`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_sharded(folder, model: torch.nn.Module, optimizer) -> None:
    """Read `save_sharded` output into `model` and `optimizer`, resharded for this run's processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_full_into_sharded(model: torch.nn.Module, optimizer, trainable: dict, optimizer_state: dict) -> None:
    """A checkpoint written without FSDP (full tensors, optimizer state keyed by position) into an
    FSDP-sharded model and its optimizer: each rank keeps its shard of the full tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]  # the optimizer's order
    by_name = {
        "state": {names[i]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                         for group in optimizer_state["param_groups"]],
    }  # fmt: skip
    set_state_dict(model, optimizer, model_state_dict=trainable, optim_state_dict=by_name,
                   options=StateDictOptions(full_state_dict=True, strict=False))  # fmt: skip
