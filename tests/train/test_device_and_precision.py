"""Device and precision choice (`preftune.precision`, `train.common`): what auto picks on which CPU,
what every trainer prints, that bf16 really runs, the CPU allocator."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch

from preftune import precision
from preftune.train import common

# Shortened /proc/cpuinfo contents of real machines (two processors where the file repeats them).
CPUINFO_AMX = (  # Intel Sapphire Rapids
    "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n\n"
    "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8\n"
)
CPUINFO_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"  # AMD EPYC (Zen 4)
CPUINFO_PLAIN_X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni\n"  # Skylake-SP
CPUINFO_ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve svebf16 i8mm bf16\nCPU implementer\t: 0x41\n"  # Graviton3
CPUINFO_ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimddp ssbs\n"  # Graviton2
CPU = torch.device("cpu")


def fake_cpuinfo(monkeypatch, tmp_path, contents: str | bytes) -> None:
    path = tmp_path / "cpuinfo"
    path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
    monkeypatch.setattr(precision, "CPUINFO", path)


@pytest.mark.parametrize(
    "contents, expected",
    [
        (CPUINFO_AMX, ("bf16", "auto: this CPU has amx_bf16, avx512_bf16")),
        (CPUINFO_AVX512_BF16, ("bf16", "auto: this CPU has avx512_bf16")),
        (CPUINFO_PLAIN_X86, ("fp32", "auto: this CPU has no bf16 units")),
        (CPUINFO_ARM_BF16, ("bf16", "auto: this CPU has bf16")),
        (CPUINFO_ARM_PLAIN, ("fp32", "auto: this CPU has no bf16 units")),
        ("", ("fp32", "auto: this CPU has no bf16 units")),
    ],
    ids=["x86-amx", "x86-avx512_bf16", "x86-without", "arm-bf16", "arm-without", "empty"],
)
def test_auto_follows_the_cpu_and_an_explicit_choice_wins(monkeypatch, tmp_path, contents, expected):
    fake_cpuinfo(monkeypatch, tmp_path, contents)
    assert precision.choose_precision(CPU, "auto") == expected
    assert precision.choose_precision(CPU) == expected  # auto is the default
    assert precision.choose_precision(CPU, "fp32") == ("fp32", "as requested")
    chosen, why = precision.choose_precision(CPU, "bf16")
    assert chosen == "bf16"
    # Forcing bf16 where the CPU has no bf16 units is honoured, with what it costs.
    assert (why == "as requested") == (expected[0] == "bf16")
    assert expected[0] == "bf16" or "slower than fp32" in why


@pytest.mark.parametrize("how", ["missing", "a directory", "not text"])
def test_an_unreadable_cpuinfo_means_fp32_and_says_so(monkeypatch, tmp_path, how):
    path = tmp_path / "cpuinfo"
    if how == "a directory":
        path.mkdir()
    elif how == "not text":
        path.write_bytes(b"flags\t: avx512_bf16 \xff\xfe\n")
    monkeypatch.setattr(precision, "CPUINFO", path)
    chosen, why = precision.choose_precision(CPU, "auto")
    assert chosen == "fp32"
    assert why.startswith(f"auto: cannot read {path} (") and why.endswith("so no bf16 units assumed")
    assert precision.choose_precision(CPU, "fp32") == ("fp32", "as requested")


def test_cuda_and_other_devices(monkeypatch):
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert precision.choose_precision(cuda, "auto") == ("bf16", "auto: CUDA with bf16 support")
    assert precision.choose_precision(cuda, "fp32") == ("fp32", "as requested")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert precision.choose_precision(cuda, "auto") == ("fp32", "auto: this CUDA device has no bf16 support")
    assert precision.choose_precision(torch.device("mps"), "auto") == ("fp32", "auto: fp32 on mps")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        precision.choose_precision(CPU, "fp16")


@pytest.mark.real_cpuinfo
def test_this_machine_reads_its_own_cpuinfo():
    """Without the tests' pin, auto reads the real /proc/cpuinfo (or says it could not)."""
    chosen, why = precision.choose_precision(CPU, "auto")
    try:
        units = precision.cpu_bf16_units()
    except OSError:
        assert (chosen, why.startswith("auto: cannot read")) == ("fp32", True)
        return
    assert (chosen, why) == (("bf16", f"auto: this CPU has {units}") if units else ("fp32", "auto: this CPU has no bf16 units"))


def test_autocast_runs_bf16_matmuls_only_when_chosen():
    a = torch.randn(8, 8)
    with precision.autocast(CPU, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with precision.autocast(CPU, "fp32"):
        assert (a @ a).dtype == torch.float32


TOPICS = ["the sky", "magnets", "plants", "rain"]


@pytest.fixture
def data(tmp_path):
    from preftune.data.schema import Message, PreferencePair, write_jsonl

    pairs = [
        PreferencePair([Message("user", f"Tell me about {t}.")], Message("assistant", f"A kind answer about {t}."),
                       Message("assistant", "The film was boring."))
        for t in TOPICS
    ]  # fmt: skip
    write_jsonl(pairs, tmp_path / "pairs.jsonl")
    (tmp_path / "prompts.txt").write_text("".join(f"Tell me about {t}.\n" for t in TOPICS))
    return tmp_path


def run_trainer(kind: str, data, out, **overrides):
    from preftune.config import DPOConfig, PPOConfig, RMConfig, SFTConfig, resolve_config
    from preftune.train.dpo import train_dpo
    from preftune.train.ppo import train_ppo
    from preftune.train.reward import train_reward_model
    from preftune.train.sft import train_sft

    pairs = dict(model="tiny", data=str(data / "pairs.jsonl"), out=str(out), batch_size=4, max_steps=2, seed=0)
    if kind == "ppo":
        settings = dict(model="tiny", prompts=str(data / "prompts.txt"), reward="python:count_e", out=str(out),
                        iterations=1, rollout_batch=4, batch_size=4, max_new_tokens=4, seed=0, value="shared")  # fmt: skip
        config = resolve_config(PPOConfig, None, settings | overrides)
        return train_ppo(config, reward_fn=lambda prompt, response: float(response.count("e")), show_progress=False)
    config_class, train = {"sft": (SFTConfig, train_sft), "rm": (RMConfig, train_reward_model), "dpo": (DPOConfig, train_dpo)}[kind]  # fmt: skip
    return train(resolve_config(config_class, None, pairs | overrides), show_progress=False)


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo", "ppo"])
def test_every_trainer_prints_its_precision_and_why(kind, data, tmp_path, monkeypatch, capsys):
    fake_cpuinfo(monkeypatch, tmp_path, CPUINFO_AVX512_BF16)
    run_trainer(kind, data, tmp_path / "auto")
    err = capsys.readouterr().err
    assert f"{kind}: " in err and "precision=bf16 (auto: this CPU has avx512_bf16)" in err
    if kind == "ppo":  # its rollout engine says the same for sampling
        assert "rollout engine=slots precision=bf16 (auto: this CPU has avx512_bf16)" in err
    run_trainer(kind, data, tmp_path / "fp32", precision="fp32")
    assert "precision=fp32 (as requested)" in capsys.readouterr().err


@pytest.mark.parametrize("kind, metric", [("dpo", "logps/chosen"), ("rm", "mean_reward")])
def test_auto_on_a_bf16_cpu_trains_in_bf16(kind, metric, data, tmp_path, monkeypatch):
    """The automatic choice really changes the arithmetic: the first step's numbers differ from
    fp32 by bf16 rounding (not zero, so autocast ran; small, so it ran the same computation)."""
    from preftune.runlog import read_metrics

    fp32 = read_metrics(run_trainer(kind, data, tmp_path / "fp32", precision="fp32", max_steps=1))[0][metric]
    fake_cpuinfo(monkeypatch, tmp_path, CPUINFO_AVX512_BF16)
    bf16 = read_metrics(run_trainer(kind, data, tmp_path / "auto", max_steps=1))[0][metric]
    assert bf16 != fp32
    assert bf16 == pytest.approx(fp32, rel=0.01)  # seen: 1.4e-6 (dpo log-probs), 2.9e-3 (rm mean reward)


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


def test_selective_checkpointing_in_bf16_over_several_row_groups(shared_data, tmp_path):
    """Regression: with autocast's weight cache on, the second row group's blocks found their
    weights already cast, their backward recomputation cast them again, and selective
    checkpointing stopped ("aten._to_copy.default ... not found in storage"). It now runs, and
    gives the numbers of the same bf16 run without checkpointing."""
    from preftune.config import DPOConfig, resolve_config
    from preftune.data.formats import read_pairs
    from preftune.data.schema import write_jsonl
    from preftune.runlog import read_metrics
    from preftune.train.dpo import train_dpo

    write_jsonl(read_pairs(shared_data / "dpo_en_demo.json")[0][:4], tmp_path / "pairs.jsonl")
    rows = {}
    for mode in ("off", "selective"):
        settings = dict(model="tiny", data=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / mode), batch_size=2,
                        max_steps=2, max_length=256, max_prompt_length=192, precision="bf16", seed=0,
                        activation_checkpointing=mode)  # fmt: skip
        rows[mode] = [r for r in read_metrics(train_dpo(resolve_config(DPOConfig, None, settings), show_progress=False)) if "loss" in r]  # fmt: skip
    assert len(rows["selective"]) == len(rows["off"]) == 2
    for off, selective in zip(rows["off"], rows["selective"], strict=True):
        for name in ("loss", "logps/chosen", "logps/rejected", "grad_norm"):
            assert selective[name] == pytest.approx(off[name], rel=1e-4), name
