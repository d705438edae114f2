"""Device and precision choice (`train.common`): what auto picks, what it prints, the CPU allocator."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

from preftune.train import common

CPUINFO_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
CPUINFO_AMX = "processor\t: 0\nflags\t\t: avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPUINFO_PLAIN_X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
CPUINFO_ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_bf16_units_from_cpuinfo():
    assert common.cpu_bf16_units(CPUINFO_AVX512_BF16) == "avx512_bf16"
    assert common.cpu_bf16_units(CPUINFO_AMX) == "amx_bf16, avx512_bf16"
    assert common.cpu_bf16_units(CPUINFO_ARM_BF16) == "bf16"
    assert common.cpu_bf16_units(CPUINFO_PLAIN_X86) == ""
    assert common.cpu_bf16_units("") == ""


def test_auto_is_fp32_on_any_cpu_and_says_why(monkeypatch):
    cpu = torch.device("cpu")
    assert common.pick_precision(cpu, "auto") == "fp32"
    assert common.pick_precision(cpu, "bf16") == "bf16"
    monkeypatch.setattr(common, "cpu_bf16_units", lambda cpuinfo=None: "")
    assert common.precision_label(cpu, "auto", "fp32") == "fp32 (auto: this CPU has no bf16 units)"
    monkeypatch.setattr(common, "cpu_bf16_units", lambda cpuinfo=None: "avx512_bf16")
    label = common.precision_label(cpu, "auto", "fp32")
    assert label.startswith("fp32 (auto; this CPU has avx512_bf16: --precision bf16")
    assert common.precision_label(cpu, "bf16", "bf16") == "bf16"
    assert common.precision_label(torch.device("cuda"), "auto", "bf16") == "bf16 (auto)"


def test_the_trainer_prints_its_precision_choice(tmp_path, capsys):
    from preftune.config import SFTConfig, resolve_config
    from preftune.data.schema import Message, PreferencePair, write_jsonl
    from preftune.train.sft import train_sft

    data = tmp_path / "pairs.jsonl"
    pair = PreferencePair(
        [Message("user", "Hi")], Message("assistant", "Hello."), Message("assistant", "No.")
    )
    write_jsonl([pair, pair], data)
    config = resolve_config(
        SFTConfig,
        None,
        dict(model="tiny", data=str(data), out=str(tmp_path / "run"), epochs=1.0, batch_size=2),
    )
    train_sft(config, show_progress=False)
    assert "precision=fp32 (auto" in capsys.readouterr().err


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_cpu_device_keeps_freed_memory_in_the_heap():
    assert common.pick_device("cpu") == torch.device("cpu")
    assert common.keep_freed_cpu_memory() is True
    # mmap is off now: a 64 MB block comes from the heap, and after free() the heap keeps it.
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.mallinfo2.restype = _MallInfo2
    before = libc.mallinfo2()
    block = libc.malloc(64 << 20)
    during = libc.mallinfo2()
    libc.free(ctypes.c_void_p(block))
    after = libc.mallinfo2()
    assert during.hblkhd == before.hblkhd  # not an mmap'd chunk
    assert after.arena >= during.uordblks - before.uordblks >= 64 << 20  # still held by the heap


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip
