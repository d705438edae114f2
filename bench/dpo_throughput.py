"""DPO throughput: preftune (`--batching fast`) against TRL 1.16 `DPOTrainer`, in one run.

    .venv/bin/python bench/dpo_throughput.py --pairs 64            # both data sets, one round
    .venv/bin/python bench/dpo_throughput.py --pairs 8 --ours fast:off:auto --trl auto --datasets hh

Same model (SmolLM2-135M-Instruct, fp32 weights, CPU, full fine-tuning), same pairs in the same
order, batch 8 pairs, max length 512.

Precision, like for like: `--ours` variants are BATCHING:CHECKPOINTING:PRECISION and `--trl`
settings PRECISION[:CHECKPOINTING], with PRECISION fp32, bf16 (autocast over fp32 weights; TRL
`bf16=True`) or auto (what `preftune --precision auto` picks on this machine, printed; for TRL the
same resolved precision). Each of our rows is compared with the fastest TRL row of the same
resolved precision (TRL at its fastest setting here: on a CPU with bf16 units, its own defaults,
`bf16:full`, have been its fastest bf16 setting), with every TRL row of that precision listed. Each run is its own subprocess (TRL peaks near 21 GB here), the
runs alternate (ours, TRL, then TRL, ours in the next round), and each process warms up with one
forward/backward before its timed pass. Timed: one pass over the pairs, i.e.
- ours: from the start of the reference precompute (it counts) to the end of the last optimizer
  step (model loading, tokenization and the final save are outside, as for TRL);
- TRL: `trainer.train()` (its reference model runs live each step, TRL's default).

Figures per run: pairs/s; tokens/s (each side's own count of the tokens of chosen and rejected
sequences, prompt counted in both, as both trainers' `num_tokens` count them); MFU = 8 N tokens /
s / peak (6N per token for the policy's forward and backward, 2N for the reference forward, N =
parameters incl. the tied LM head; attention FLOPs left out), against an fp32 matmul peak measured
in this run; peak RSS of the subprocess (`os.wait4`); the step-1 loss (log 2 for both: policy ==
reference) and step-1 chosen log-probs (TRL's completions keep the chat template's "\\n" after
<|im_end|>, which ours drop, so these differ by that token).

A full pass over dpo_en_demo.json (300 pairs) at TRL's ~0.07 pairs/s is over an hour, so `--pairs`
takes a fixed subset (the first N pairs of each set; 64, eight optimizer steps, by default).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PREFTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))
LEARNING_RATE, BETA, SEED = 5e-7, 0.1, 0


# ----------------------------------------------------------------------------- data


_WORDS = (
    "the a plant water light garden house river city friend teacher child story music idea road market "
    "morning night winter summer bread coffee letter window door paper book question answer problem reason "
    "simple careful quick slow bright quiet happy tired strong gentle early late often never always maybe "
    "make take give find keep help start build learn explain remember choose carry follow notice prepare "
    "because while after before although unless since until when where how why which that this those"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "?", "!"])


def _text(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def hh_style_pairs(count: int, seed: int = 0):
    """Anthropic-HH-like conversations: two human turns around an assistant turn, then two answers;
    the prompt is about twice as long as each response (about 230 vs 115 tokens with SmolLM2)."""
    from preftune.data.schema import Message, PreferencePair

    rng = random.Random(seed)
    pairs = []
    for i in range(count):
        prompt = [
            Message("user", _text(rng, 6)),
            Message("assistant", _text(rng, 4)),
            Message("user", _text(rng, 6)),
        ]
        pairs.append(
            PreferencePair(
                prompt, Message("assistant", _text(rng, 8)), Message("assistant", _text(rng, 8)), id=f"hh-{i}"
            )
        )
    return pairs


def write_datasets(folder: Path, names: list[str], count: int) -> dict[str, Path]:
    from preftune.data.formats import read_pairs
    from preftune.data.schema import write_jsonl

    files = {}
    for name in names:
        if name == "demo":
            pairs, _ = read_pairs(SHARED_DATA / "dpo_en_demo.json")
        elif name == "hh":
            pairs = hh_style_pairs(count)
        else:
            raise SystemExit(f"unknown data set {name!r}: demo or hh")
        if len(pairs) < count:
            raise SystemExit(f"{name}: only {len(pairs)} pairs, asked for {count}")
        files[name] = folder / f"{name}.jsonl"
        write_jsonl(pairs[:count], files[name])
    return files


# ----------------------------------------------------------------------------- workers


def _set_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def _warm_up(model) -> None:
    """One forward/backward on a short input: thread pools, allocator and lazy init, untimed."""
    import torch

    high = min(1000, model.config.vocab_size)  # a small test model has a small vocabulary
    ids = torch.randint(3, high, (2, 64), generator=torch.Generator().manual_seed(0))
    ids = ids.to(next(model.parameters()).device)  # --device cuda: warm up the GPU, not the CPU
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)


def mark_first_calls(points: dict[str, tuple[object, str]]) -> dict[str, float]:
    """Wrap each `(module, function name)` so that its first call records `time.perf_counter()`
    under its key: the timed span of a trainer run from outside, without touching the loop."""
    marks: dict[str, float] = {}

    def wrap(key, original):
        def marked(*args, **kwargs):
            marks.setdefault(key, time.perf_counter())
            return original(*args, **kwargs)

        return marked

    for key, (owner, name) in points.items():
        setattr(owner, name, wrap(key, getattr(owner, name)))
    return marks


def worker_ours(args) -> dict:
    import torch

    import preftune.train.dpo as dpo_module
    from preftune.config import DPOConfig, resolve_config
    from preftune.models.load import load_policy
    from preftune.runlog import read_metrics
    from preftune.train import common

    warm, _ = load_policy(args.model, device=args.device)
    _warm_up(warm)
    del warm
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-ours-"))
    common.reference_cache_dir = lambda: work / "refcache"  # never reuse a cache: the precompute is timed
    marks = mark_first_calls(
        {"start": (dpo_module, "compute_pair_logprobs"), "end": (common, "save_checkpoint")}
    )
    config = resolve_config(DPOConfig, None, dict(
        model=args.model, data=str(args.data), out=str(work / "run"), batch_size=args.batch_size, epochs=1.0,
        lr=LEARNING_RATE, beta=BETA, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        seed=SEED, keep_last=1, batching=args.batching, pack_length=args.pack_length,
        activation_checkpointing=args.checkpointing, device=args.device, precision=args.precision,
    ))  # fmt: skip
    dpo_module.train_dpo(config, show_progress=False)
    rows = [r for r in read_metrics(work / "run") if "loss" in r]
    return {
        "precision": resolved(args.precision, args.device),
        "seconds": marks["end"] - marks["start"],
        "pairs": len(rows) * args.batch_size,
        "tokens": int(rows[-1]["num_tokens"]),
        "step1_loss": rows[0]["loss"],
        "step1_logps_chosen": rows[0]["logps/chosen"],
        "threads": torch.get_num_threads(),
    } | _gpu_memory(args)


def _gpu_memory(args) -> dict:
    """Peak GPU memory of the timed run (--device cuda only; the CPU runs report peak RSS)."""
    import torch

    return {"peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30} if args.device == "cuda" else {}


def resolved(precision: str, device: str) -> str:
    """fp32 or bf16: `auto` as `preftune --precision auto` resolves it on this machine."""
    import torch

    from preftune.precision import choose_precision

    return choose_precision(torch.device(device), precision)[0]


def worker_trl(args) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preftune.data.formats import read_pairs
    from preftune.models.smollm2 import ensure_smollm2
    from preftune.train.common import DataOrder

    # The same fp32 safetensors folder `load_policy("smollm2-135m")` reads, or --model's folder.
    folder = ensure_smollm2() if args.model == "smollm2-135m" else args.model
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _warm_up(model)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pairs, _ = read_pairs(args.data)
    # Our loop's epoch-0 order, read sequentially by TRL: step k sees the same pairs in both.
    order = DataOrder(len(pairs), SEED)._epoch_order(0)
    rows = [
        {
            "prompt": [m.to_dict() for m in pairs[i].prompt],
            "chosen": [pairs[i].chosen.to_dict()],
            "rejected": [pairs[i].rejected.to_dict()],
        }  # fmt: skip
        for i in order
    ]
    work = tempfile.mkdtemp(prefix="bench-dpo-trl-")
    # bf16 autocast or not, gradient checkpointing or not: TRL's two speed settings (its defaults
    # are bf16=True and gradient_checkpointing=True, even on CPU).
    speed = {"bf16": args.precision == "bf16", "gradient_checkpointing": args.checkpointing != "off"}
    config = trl.DPOConfig(
        output_dir=work, per_device_train_batch_size=args.batch_size, num_train_epochs=1, learning_rate=LEARNING_RATE,
        beta=BETA, max_length=args.max_length, logging_steps=1, report_to="none", save_strategy="no", seed=SEED,
        use_cpu=args.device == "cpu", lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
        train_sampling_strategy="sequential", dataloader_num_workers=0, **speed,
    )  # fmt: skip
    trainer = trl.DPOTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logged = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {
        "precision": args.precision,
        "seconds": seconds,
        "pairs": len(trainer.train_dataset),  # after TRL drops pairs whose prompt alone fills max_length
        "tokens": int(logged[-1]["num_tokens"]),
        "step1_loss": logged[0]["loss"],
        "step1_logps_chosen": logged[0]["logps/chosen"],
        "threads": torch.get_num_threads(),
        "bf16": config.bf16,
        "gradient_checkpointing": config.gradient_checkpointing,
    } | _gpu_memory(args)


def run_worker(kind: str, data: Path, args, limit: int | None = None, script: str = __file__) -> dict:
    """One measurement in a fresh subprocess; its peak RSS from the kernel's accounting (wait4).

    `kind` is `ours:BATCHING:CHECKPOINTING[:PRECISION]` (e.g. `ours:fast:off`,
    `ours:fast:full:auto`) or `trl[:PRECISION[:CHECKPOINTING]]` (e.g. `trl:bf16:full`); a missing
    precision is --precision, and `trl-defaults` is `trl:bf16:full`. A worker that dies (the
    kernel's OOM killer, typically) comes back as {"failed": reason}.
    """
    out = Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".json")[1])
    data_file = data
    if limit is not None:  # a shorter pass (TRL's defaults are too slow for the full subset)
        data_file = data.with_name(f"{data.stem}-{limit}.jsonl")
        data_file.write_text("".join(data.read_text().splitlines(keepends=True)[:limit]))
    worker, batching, checkpointing, precision = variant_of(kind, getattr(args, "precision", "fp32"))
    if worker == "trl":  # TRL takes a yes/no bf16 flag: resolve auto here, as preftune would
        precision = resolved(precision, getattr(args, "device", "cpu"))
    command = [sys.executable, script, "--worker", worker, "--data", str(data_file), "--result", str(out),
               "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
               "--threads", str(args.threads), "--batching", batching, "--checkpointing", checkpointing,
               "--pack-length", str(args.pack_length)]  # fmt: skip
    if hasattr(args, "max_prompt_length"):
        command += ["--max-prompt-length", str(args.max_prompt_length)]
    for flag in ("model", "device"):
        if hasattr(args, flag):
            command += [f"--{flag}", str(getattr(args, flag))]
    command += ["--precision", precision]
    log = out.with_suffix(".log")
    with log.open("w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    peak_rss_gb = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    if status != 0:
        signal_number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        reason = "killed by SIGKILL (out of memory?)" if signal_number == 9 else f"exit status {status}"
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
        print(
            f"  {kind} failed: {reason} at {peak_rss_gb:.1f} GB; log {log}:\n{tail}",
            file=sys.stderr,
            flush=True,
        )
        return {"failed": reason, "peak_rss_gb": peak_rss_gb}
    result = json.loads(out.read_text())
    result["peak_rss_gb"] = peak_rss_gb
    return result


def variant_of(kind: str, precision: str) -> tuple[str, str, str, str]:
    """(worker, batching, checkpointing, precision) of a kind: `ours:fast:full:bf16` -> ("ours",
    "fast", "full", "bf16"); `trl:bf16:full` -> ("trl", "fast", "full", "bf16"). Missing parts:
    batching fast, checkpointing off, precision `precision`. `trl-defaults` is TRL's defaults,
    `trl:bf16:full`. The precision may be `auto` (see `resolved`)."""
    if kind == "trl-defaults":
        return "trl", "fast", "full", "bf16"
    parts = kind.split(":")
    if parts[0] == "ours" and len(parts) <= 4:
        return tuple(parts[:4] + ["fast", "off", precision][len(parts) - 1 :])  # type: ignore[return-value]
    if parts[0] == "trl" and len(parts) <= 3:
        return "trl", "fast", parts[2] if len(parts) > 2 else "off", parts[1] if len(parts) > 1 else precision
    raise SystemExit(f"unknown kind {kind!r}: ours:BATCHING:CHECKPOINTING[:PRECISION] or trl[:PRECISION[:CHECKPOINTING]]")


def worker_main(args) -> None:
    _set_threads(args.threads)
    with worker_scratch():
        result = worker_ours(args) if args.worker == "ours" else worker_trl(args)
    Path(args.result).write_text(json.dumps(result))


@contextmanager
def worker_scratch():
    """A worker's temporary files (its run folder: 2.6 GB of checkpoints for SmolLM2) go in one
    folder that is removed when the worker ends, even on error."""
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as scratch:
        previous, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            yield
        finally:
            tempfile.tempdir = previous


# ----------------------------------------------------------------------------- report


def matmul_peak_gflops(
    threads: int, size: int = 2048, repeats: int = 8, device: str = "cpu", precision: str | None = None
) -> float:
    """Best-of matmul rate on this machine now (the MFU denominator), in `precision` (default: fp32
    on CPU; on CUDA bf16, of an 8192-cube product, what bf16 autocast runs)."""
    import torch

    _set_threads(threads)
    if device == "cuda":
        size = max(size, 8192)
    precision = precision or ("bf16" if device == "cuda" else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (
        torch.randn(size, size, device=device, dtype=dtype),
        torch.randn(size, size, device=device, dtype=dtype),
    )
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def smollm2_parameters(folder: str | None = None) -> int:
    """Parameters of SmolLM2-135M, or of the Llama-architecture model in `folder` (--model)."""
    import json as _json

    from preftune.models.smollm2 import ensure_smollm2

    c = _json.loads(((Path(folder) if folder else ensure_smollm2()) / "config.json").read_text())
    h, i, layers, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * (c.get("head_dim") or h // c["num_attention_heads"])
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q, o; k, v; MLP; two norms
    untied = 0 if c.get("tie_word_embeddings", True) else v * h
    return layers * per_layer + h + v * h + untied  # + final norm + (tied) LM head


def summarise(
    kind: str, runs: list[dict], peak: float, parameters: int, flops_per_token_parameter: int = 8
) -> dict:
    """Best-of-rounds figures of one kind; MFU against `peak`, the rate of the kind's precision."""
    done = [r for r in runs if "failed" not in r]
    if not done:
        return {"kind": kind, "failed": runs[0]["failed"], "peak_rss_gb": max(r["peak_rss_gb"] for r in runs)}
    seconds = min(r["seconds"] for r in done)  # best of the rounds: the least disturbed by neighbours
    best = next(r for r in done if r["seconds"] == seconds)
    return {
        "kind": kind,
        "seconds": seconds,
        "all_seconds": [round(r["seconds"], 1) for r in done],
        "pairs_per_s": best["pairs"] / seconds,
        "tokens_per_s": best["tokens"] / seconds,
        "mfu": flops_per_token_parameter * parameters * best["tokens"] / seconds / (peak * 1e9),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in done),
        "step1_loss": best["step1_loss"],
        "step1_logps_chosen": best["step1_logps_chosen"],
        "pairs": best["pairs"],
        "tokens": best["tokens"],
    } | ({"peak_gpu_gb": max(r["peak_gpu_gb"] for r in done)} if "peak_gpu_gb" in best else {})


def measure(
    files: dict[str, Path], kinds: list[str], args, script: str = __file__
) -> dict[tuple[str, str], list[dict]]:
    """Every kind on every data set, `args.rounds` times, the order reversed in every other round."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for round_index in range(args.rounds):
        for name, data in files.items():
            for kind in kinds if round_index % 2 == 0 else kinds[::-1]:
                print(f"round {round_index + 1}: {name} {kind} ...", file=sys.stderr, flush=True)
                result = run_worker(kind, data, args, script=script)
                if "failed" not in result:
                    print(f"  {result['seconds']:.1f} s, {result['pairs']} pairs, peak RSS {result['peak_rss_gb']:.2f} GB",
                          file=sys.stderr, flush=True)  # fmt: skip
                runs.setdefault((name, kind), []).append(result)
    return runs


def report(
    title: str,
    files,
    kinds: list[str],
    runs,
    peak: float | dict[str, float],
    parameters: int,
    flops: int,
    value_label: str,
    precision: str = "fp32",
    device: str = "cpu",
) -> dict:
    """Print the table and the ours/TRL ratios; return them as a dict. `peak`: one matmul rate, or
    one per precision ({"fp32": ..., "bf16": ...}); each row's MFU uses its own precision's. Each
    of our rows is set against the fastest TRL row of the same (resolved) precision."""
    peaks = peak if isinstance(peak, dict) else {"fp32": peak, "bf16": peak}
    summary: dict = {"matmul_peak_gflops": peaks, "rows": [], "ratios": []}
    print(title)
    header = (f"{'data':6} {'trainer':30} {'s/pass':>8} {'pairs/s':>8} {'tokens/s':>9} {'MFU':>6} {'peak RSS':>9} "
              f"{'step-1 loss':>12} {value_label:>14}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name in files:
        rows = {}
        for kind in kinds:
            if (name, kind) not in runs:
                continue
            requested = variant_of(kind, precision)[3]
            row_precision = resolved(requested, device)
            row = summarise(kind, runs[(name, kind)], peaks[row_precision], parameters, flops)
            row |= {"data": name, "precision": row_precision, "requested_precision": requested}
            rows[kind] = row
            summary["rows"].append(row)
            label = _label(kind, requested, row_precision)
            if "failed" in row:
                print(f"{name:6} {label:30} {row['failed']} (peak RSS {row['peak_rss_gb']:.2f} GB)")
                continue
            print(f"{name:6} {label:30} {row['seconds']:8.1f} {row['pairs_per_s']:8.3f} {row['tokens_per_s']:9.1f} "
                  f"{100 * row['mfu']:5.1f}% {row['peak_rss_gb']:7.2f}GB {row['step1_loss']:12.6f} {row['step1_logps_chosen']:14.4f}")  # fmt: skip
        done = {kind: row for kind, row in rows.items() if "failed" not in row}
        for kind, ours in done.items():
            if not kind.startswith("ours"):
                continue
            same = [(k, r) for k, r in done.items() if not k.startswith("ours") and r["precision"] == ours["precision"]]
            if not same:
                print(f"{name:6} {kind}: no TRL row in {ours['precision']} to compare with")
                continue
            fastest = max(same, key=lambda item: item[1]["pairs_per_s"])[0]
            for trl_kind, trl in sorted(same, key=lambda item: item[0] != fastest):
                ratio = {
                    "data": name,
                    "ours": kind,
                    "trl": trl_kind,
                    "precision": ours["precision"],
                    "trl_fastest": trl_kind == fastest,
                    "speedup_pairs": ours["pairs_per_s"] / trl["pairs_per_s"],
                    "memory_ratio": ours["peak_rss_gb"] / trl["peak_rss_gb"],
                    "step1_loss_diff": abs(ours["step1_loss"] - trl["step1_loss"]),
                }
                summary["ratios"].append(ratio)
                against = _label(trl_kind, trl["requested_precision"], trl["precision"])
                print(f"{name:6} {_label(kind, ours['requested_precision'], ours['precision'])} / {against}"
                      f"{' (TRL fastest here)' if ratio['trl_fastest'] else ''}: {ratio['speedup_pairs']:.2f}x pairs/s, "
                      f"{ratio['memory_ratio']:.2f}x peak RSS, |step-1 loss difference| {ratio['step1_loss_diff']:.1e}")  # fmt: skip
    return summary


def _label(kind: str, requested: str, precision: str) -> str:
    """`preftune fast ckpt=full auto=bf16`, `TRL bf16 ckpt (its defaults)`, `TRL fp32`."""
    worker, batching, checkpointing, _ = variant_of(kind, requested)
    shown = f"auto={precision}" if requested == "auto" else precision
    if worker == "trl":
        defaults = " (its defaults)" if (precision, checkpointing) == ("bf16", "full") else ""
        return f"TRL {shown}{' ckpt' if checkpointing != 'off' else ''}{defaults}"
    return f"preftune {batching} ckpt={checkpointing} {shown}"


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden flags `run_worker` passes to a benchmark's own script in its subprocess."""
    for flag, default in (("--worker", None), ("--data", None), ("--result", None), ("--batching", "fast"),
                          ("--checkpointing", "off")):  # fmt: skip
        parser.add_argument(flag, default=default, help=argparse.SUPPRESS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pairs", type=int, default=64, help="pairs per data set (a fixed subset: the first N)"
    )
    parser.add_argument("--datasets", default="demo,hh")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating rounds; the best time of each side counts"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--max-prompt-length",
        type=int,
        default=384,
        help="ours only (TRL cuts prompt+response at --max-length)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in every process (0: torch's default)"
    )
    parser.add_argument(
        "--ours",
        default="fast:off:auto,fast:full:auto,fast:full:fp32",
        help="our variants, BATCHING:CHECKPOINTING[:PRECISION] each (batching fast|padded; checkpointing "
        "off|selective|full; precision auto|fp32|bf16, default --precision)",
    )
    parser.add_argument(
        "--trl",
        default="auto,auto:full,fp32",
        help="TRL settings, PRECISION[:CHECKPOINTING] each (auto|fp32|bf16; off|full, default off); "
        "auto:full on a CPU with bf16 units is TRL's defaults",
    )
    parser.add_argument("--pack-length", type=int, default=0)
    parser.add_argument(
        "--trl-defaults-pairs",
        type=int,
        default=0,
        help="also time TRL's defaults (bf16, checkpointing) on this many pairs",
    )
    parser.add_argument("--no-trl", action="store_true", help="ours only (quick checks)")
    parser.add_argument("--json", help="write the summary here too")
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="policy for both trainers: smollm2-135m or a local model folder (bench/gpu_check.sh makes random-init ones)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both trainers run")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="for variants and TRL settings that name none: auto (preftune's automatic choice here, "
        "printed), fp32, or bf16 autocast over fp32 weights (TRL: bf16=True)",
    )
    add_worker_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args)

    print(f"precision auto on this machine: {describe_auto(args.device)}", file=sys.stderr, flush=True)
    files = write_datasets(
        Path(tempfile.mkdtemp(prefix="bench-dpo-data-")), args.datasets.split(","), args.pairs
    )
    parameters = smollm2_parameters(None if args.model == "smollm2-135m" else args.model)
    kinds = kinds_of(args)
    precisions = sorted(
        {resolved(variant_of(kind, args.precision)[3], args.device) for kind in kinds}
        | ({"bf16"} if args.trl_defaults_pairs else set())
    )
    peaks = {p: [matmul_peak_gflops(args.threads, device=args.device, precision=p)] for p in precisions}
    runs = measure(files, kinds, args)
    if args.trl_defaults_pairs:
        for name, data in files.items():
            print(f"{name} trl-defaults ({args.trl_defaults_pairs} pairs) ...", file=sys.stderr, flush=True)
            runs[(name, "trl-defaults")] = [
                run_worker("trl-defaults", data, args, limit=args.trl_defaults_pairs)
            ]
        kinds.append("trl-defaults")
    for p in precisions:
        peaks[p].append(matmul_peak_gflops(args.threads, device=args.device, precision=p))
    peak = {p: max(rates) for p, rates in peaks.items()}
    model = "SmolLM2-135M" if args.model == "smollm2-135m" else args.model
    title = (f"\nDPO, {model} {args.device.upper()}, batch {args.batch_size}, max length {args.max_length}, "
             f"{args.pairs} pairs per set, {args.rounds} round(s); auto = {describe_auto(args.device)}; "
             "matmul peak (GFLOP/s, measured at start and end): "
             + "; ".join(f"{p} {peak[p]:.0f} ({', '.join(f'{r:.0f}' for r in rates)})" for p, rates in peaks.items()))  # fmt: skip
    summary = report(title, files, kinds, runs, peak, parameters, 8, "step-1 logp_c", args.precision, args.device)
    if args.json:
        Path(args.json).write_text(
            json.dumps(summary | {"parameters": parameters, "pairs": args.pairs}, indent=2) + "\n"
        )


def kinds_of(args) -> list[str]:
    """The kinds to run, from --ours and --trl (none of TRL's with --no-trl)."""
    ours = [f"ours:{variant}" for variant in args.ours.split(",") if variant]
    trl = [] if args.no_trl else [f"trl:{setting}" for setting in args.trl.split(",") if setting]
    for kind in ours + trl:
        worker, batching, checkpointing, precision = variant_of(kind, args.precision)
        if precision not in ("auto", "fp32", "bf16") or checkpointing not in ("off", "selective", "full"):
            raise SystemExit(f"{kind}: precision must be auto, fp32 or bf16 and checkpointing off, selective or full")
        if worker == "trl" and checkpointing == "selective":
            raise SystemExit(f"{kind}: TRL's gradient checkpointing is off or full")
    return ours + trl


def describe_auto(device: str) -> str:
    """What `--precision auto` resolves to here, and why (`preftune.precision`)."""
    import torch

    from preftune.precision import choose_precision

    return "{} ({})".format(*choose_precision(torch.device(device), "auto"))


if __name__ == "__main__":
    main()
