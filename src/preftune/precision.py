"""Which precision a run computes in: the one decision every trainer and the rollout engine use.

`--precision auto` follows the hardware. bf16 autocast where bf16 matmuls are fast: CUDA, and
CPUs with bf16 matrix instructions (x86 `amx_bf16` or `avx512_bf16`, Arm `bf16`, as named in
/proc/cpuinfo). fp32 on any other CPU, where bf16 matmuls are emulated: measured about 100x slower
than fp32 on such a machine, while on this project's `avx512_bf16` CPU bf16 runs about 2.5x the
fp32 matmul rate and a SmolLM2 DPO pass 1.6-1.8x faster (bench/README.md). An explicit `fp32` or
`bf16` always wins. `choose_precision` returns the reason with the choice, and every caller prints
both on its start line, so a run's log says what it computed in and why.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# Read on every call (not cached), so tests can point it at fake contents.
CPUINFO = Path("/proc/cpuinfo")
# The flags that mean hardware bf16 dot products, most capable first.
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def cpu_bf16_units(cpuinfo: str | None = None) -> str:
    """The CPU's bf16 matrix instructions named in /proc/cpuinfo (`flags` on x86, `Features` on
    Arm), comma-separated, or "" where it names none. Raises OSError/UnicodeError when the file
    cannot be read; `choose_precision` turns that into fp32 with the reason."""
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text(encoding="utf-8")
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(value.split())
    return ", ".join(f for f in BF16_FLAGS if f in flags)


def choose_precision(device: torch.device, requested: str = "auto") -> tuple[str, str]:
    """(precision, why) for `requested` in PRECISIONS on `device`; see the module note."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device.type == "cuda":
        if requested != "auto":
            return requested, "as requested"
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: CUDA with bf16 support"
        return "fp32", "auto: this CUDA device has no bf16 support"
    if device.type != "cpu":  # mps and others: autocast support varies, keep fp32 unless asked
        return (requested, "as requested") if requested != "auto" else ("fp32", f"auto: fp32 on {device.type}")
    try:
        units, unknown = cpu_bf16_units(), ""
    except (OSError, UnicodeError) as error:  # not Linux, or a sandbox that hides /proc
        units, unknown = "", f"cannot read {CPUINFO} ({type(error).__name__})"
    if requested == "fp32":
        return "fp32", "as requested"
    if requested == "bf16":
        if units:
            return "bf16", "as requested"
        # Honour it, but say what it costs: emulated bf16 matmuls are far slower than fp32.
        return "bf16", f"as requested, though {unknown or 'this CPU has no bf16 units'}: expect it to be slower than fp32"
    if units:
        return "bf16", f"auto: this CPU has {units}"
    if unknown:
        return "fp32", f"auto: {unknown}, so no bf16 units assumed"
    return "fp32", "auto: this CPU has no bf16 units"


def autocast(device: torch.device, precision: str, checkpointing: str = "off"):
    """The context the forward passes run in: bf16 autocast (weights stay fp32) or nothing.

    Under `--activation-checkpointing selective`, autocast's cache of bf16 weight copies is off:
    with it, a block run a second time in one autocast region (the next row group of a batch)
    finds its weights already cast, and its backward recomputation, which starts with an empty
    cache, casts them again, so PyTorch's selective checkpointing sees ops the forward did not
    record and stops with "aten._to_copy.default ... not found in storage". Without the cache every
    use casts its weight: one cast of the weights per row group, small next to the matmuls."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=checkpointing != "selective")
    return nullcontext()
