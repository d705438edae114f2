"""Fusion options for one DPO training step on CPU: eager against torch.compile, and cheaper changes.

    .venv/bin/python bench/compile_step.py                     # SmolLM2-135M, demo pairs, auto precision
    .venv/bin/python bench/compile_step.py --model tiny --pairs 4 --steps 2 --precisions auto   # smoke

The step is `preftune dpo --batching fast`'s: the policy's forward over prefix-shared packed rows
with span attention (`models.span_attention`), the LM head on completion tokens only, the
reference's forward (no gradients), the sigmoid loss and the policy's backward, under the run's
precision (`auto`: what `--precision auto` picks here, printed; or fp32, bf16). All in one process;
each variant gets fresh policy and reference models, one untimed step (for `compile`, the
compilation, timed apart), then `--steps` timed steps that cycle over `--batches` batches of
`--pairs` demo pairs each (other batches have other span lengths: what recompiles).
Variants (`--variants`, comma-separated):
- `eager`: the code as it is;
- `compile`: every transformer block `torch.compile`d (inductor), as `--compile` does;
- `compile_opaque_attention`: the same with span attention left to eager (`torch.compiler.disable`),
  so the compiled graphs do not depend on the spans' lengths;
- `compile_mlp_norms`: only the element-wise-heavy modules compiled (MLP, RMSNorms);
- `rms_norm`: transformers' LlamaRMSNorm (upcast, pow, mean, rsqrt, two muls) replaced by torch's
  own `F.rms_norm`: the fused norm an installed library offers on CPU (liger-kernel and apex are
  GPU-only; intel-extension-for-pytorch stops at torch 2.8);
- `matmul_attention`: span attention's plain matmul-softmax kernel (`span_attention.KERNEL`);
- `ckpt_full`, `ckpt_selective`: activation checkpointing, for the weight-cast count below.
Also printed: attention alone (flash SDPA against matmul-softmax, forward+backward, at --span
tokens, SmolLM2's 9 query / 3 key-value heads of 64), and the fp32->bf16 weight casts each
variant's step makes under autocast (autocast casts each weight once per autocast region, so
recomputation under checkpointing casts again), with the time one cast of all weights takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_throughput import SHARED_DATA, _set_threads  # noqa: E402

VARIANTS = ("eager", "compile", "compile_opaque_attention", "compile_mlp_norms", "rms_norm", "matmul_attention",
            "ckpt_full", "ckpt_selective")  # fmt: skip


def load_models(model_name: str):
    import copy

    from preftune.models.load import load_policy

    policy, tokenizer = load_policy(model_name, device="cpu")
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.train()
    return policy, reference, tokenizer


def make_batches(tokenizer, pairs: int, batches: int, max_length: int):
    from preftune.data.batching import collate_pairs
    from preftune.data.formats import read_pairs
    from preftune.data.tokenize import PairTokenizer

    data, _ = read_pairs(SHARED_DATA / "dpo_en_demo.json")
    if len(data) < pairs * batches:
        raise SystemExit(f"only {len(data)} demo pairs, asked for {pairs} x {batches}")
    pair_tokenizer = PairTokenizer(tokenizer, max_length=max_length, max_prompt_length=max_length * 3 // 4)
    return [
        collate_pairs([pair_tokenizer(p) for p in data[i * pairs : (i + 1) * pairs]], tokenizer.pad_token_id, "fast")
        for i in range(batches)
    ]  # fmt: skip


def dpo_step(policy, reference, batch, precision: str, checkpointing: str = "off") -> float:
    """One training step's work (no optimizer update: the same for every variant); its seconds."""
    import torch

    from preftune.losses.dpo import sigmoid_loss
    from preftune.models.logprobs import pair_logprobs
    from preftune.precision import autocast

    start = time.perf_counter()
    device = torch.device("cpu")
    with autocast(device, precision, checkpointing):
        ours = pair_logprobs(policy, batch)
        with torch.no_grad():
            ref = pair_logprobs(reference, batch)
    loss, _ = sigmoid_loss(ours["chosen_logps"], ours["rejected_logps"], ref["chosen_logps"], ref["rejected_logps"],
                           beta=0.1)  # fmt: skip
    loss.mean().backward()
    policy.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def apply_variant(variant: str, policy, reference) -> None:
    """Change the models (or the code they run) as `variant` says; `eager` changes nothing."""

    from preftune.models import span_attention
    from preftune.models.checkpointing import enable_activation_checkpointing
    from preftune.train.distributed import transformer_blocks

    span_attention.KERNEL = "matmul" if variant == "matmul_attention" else "sdpa"
    if variant in ("compile", "compile_opaque_attention"):
        for model in (policy, reference):
            for block in transformer_blocks(model):
                block.compile()
    if variant == "compile_mlp_norms":
        for model in (policy, reference):
            for block in transformer_blocks(model):
                for module in (block.mlp, block.input_layernorm, block.post_attention_layernorm):
                    module.compile()
    if variant == "ckpt_full":
        enable_activation_checkpointing(policy, "full")
    if variant == "ckpt_selective":
        enable_activation_checkpointing(policy, "selective")


def set_code_paths(variant: str) -> None:
    """Process-wide code swaps for a variant, undone for the others."""
    import torch
    import torch.nn.functional as F
    from transformers.models.llama import modeling_llama

    from preftune.models import span_attention

    if not hasattr(set_code_paths, "originals"):
        set_code_paths.originals = (modeling_llama.LlamaRMSNorm.forward, span_attention.span_attention_forward)
    norm_forward, span_forward = set_code_paths.originals
    if variant == "rms_norm":
        def fused_norm(self, hidden_states):  # transformers' numbers: fp32 normalisation, weight in input dtype
            dtype = hidden_states.dtype
            normed = F.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), eps=self.variance_epsilon)
            return self.weight * normed.to(dtype)

        modeling_llama.LlamaRMSNorm.forward = fused_norm
    else:
        modeling_llama.LlamaRMSNorm.forward = norm_forward
    span_attention.span_attention_forward = (
        torch.compiler.disable(span_forward) if variant == "compile_opaque_attention" else span_forward
    )


def count_weight_casts(policy, reference, batch, precision: str, checkpointing: str) -> int:
    """fp32 -> bf16 copies of parameters during one step (autocast's weight casts)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    pointers = {p.data_ptr() for model in (policy, reference) for p in model.parameters()}
    casts = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
                source = args[0]
                if source.dtype == torch.float32 and source.data_ptr() in pointers:
                    casts[0] += 1
            return func(*args, **kwargs)

    with Count():
        dpo_step(policy, reference, batch, precision, checkpointing)
    return casts[0]


def cast_all_seconds(policy) -> tuple[int, float]:
    """(how many weight tensors are cast under autocast: the 2-D ones, linear layers; best seconds to cast them all once)."""
    import torch

    weights = [p for p in policy.parameters() if p.dim() == 2]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for w in weights:
            w.to(torch.bfloat16)
        best = min(best, time.perf_counter() - start)
    return len(weights), best


def attention_alone(span: int, repeats: int, precision: str) -> dict[str, float]:
    """Best forward+backward seconds of one causal span's attention, flash SDPA vs matmul-softmax."""
    import torch

    from preftune.models import span_attention

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 9, span, 64, generator=generator, dtype=dtype).requires_grad_()
    k, v = (torch.randn(1, 3, span, 64, generator=generator, dtype=dtype).requires_grad_() for _ in range(2))
    options = {"dropout_p": 0.0, "scale": None, "enable_gqa": True}
    result = {}
    for kernel in ("sdpa", "matmul"):
        span_attention.KERNEL = kernel
        best = float("inf")
        for _ in range(repeats + 1):
            start = time.perf_counter()
            out = span_attention._attend(q, k, v, None, options)
            out.float().sum().backward()
            best = min(best, time.perf_counter() - start)
        result[kernel] = best
    span_attention.KERNEL = "sdpa"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, or a local folder")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per batch")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches the timed steps cycle over")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--precisions", default="auto", help="auto, fp32, bf16; comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--span", type=int, default=400, help="tokens of the attention-alone span")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    import torch

    from preftune.precision import choose_precision
    from preftune.train.common import keep_freed_cpu_memory

    _set_threads(args.threads)
    keep_freed_cpu_memory()  # as in training
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    cpu = torch.device("cpu")
    print(f"precision auto here: {'{} ({})'.format(*choose_precision(cpu, 'auto'))}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model {args.model}; {args.batches} batch(es) of {args.pairs} demo pairs")  # fmt: skip
    rows = []
    for requested in args.precisions.split(","):
        precision = choose_precision(cpu, requested)[0]
        label = f"auto={precision}" if requested == "auto" else precision
        for variant in variants:
            torch._dynamo.reset()
            set_code_paths(variant)
            policy, reference, tokenizer = load_models(args.model)
            batches = make_batches(tokenizer, args.pairs, args.batches, args.max_length)
            apply_variant(variant, policy, reference)
            checkpointing = {"ckpt_full": "full", "ckpt_selective": "selective"}.get(variant, "off")
            first = dpo_step(policy, reference, batches[0], precision, checkpointing)
            seconds = [dpo_step(policy, reference, batches[(i + 1) % len(batches)], precision, checkpointing)
                       for i in range(args.steps)]  # fmt: skip
            # Compiled code casts inside its kernels, out of the dispatcher's sight: counted in eager only.
            counted = precision == "bf16" and not variant.startswith("compile")
            casts = count_weight_casts(policy, reference, batches[0], precision, checkpointing) if counted else 0
            rows.append((label, variant, first, seconds, casts))
            print(f"  {label} {variant}: first {first:.2f} s, timed {', '.join(f'{s:.2f}' for s in seconds)}",
                  file=sys.stderr, flush=True)  # fmt: skip
            del policy, reference
    set_code_paths("eager")
    tensors, cast_seconds = cast_all_seconds(load_models(args.model)[0])

    print(f"\n{'precision':10} {'variant':26} {'first step s':>12} {'median s':>9} {'best s':>7} {'vs eager':>9} "
          f"{'weight casts':>12}")  # fmt: skip
    eager = {label: min(s) for label, variant, _, s, _ in rows if variant == "eager"}
    for label, variant, first, seconds, casts in rows:
        ratio = f"{eager[label] / min(seconds):8.2f}x" if label in eager else ""
        print(f"{label:10} {variant:26} {first:12.2f} {statistics.median(seconds):9.2f} {min(seconds):7.2f} {ratio:>9} "
              f"{casts if casts else '-':>12}")  # fmt: skip
    print(f"(vs eager: eager's best step / this variant's best; above 1 is faster. One cast of the policy's "
          f"{tensors} weight matrices to bf16: {cast_seconds:.3f} s; weight casts count both models.)")
    for requested in args.precisions.split(","):
        precision = choose_precision(cpu, requested)[0]
        alone = attention_alone(args.span, 5, precision)
        print(f"attention alone, {args.span}-token causal span, {precision}, forward+backward: flash SDPA "
              f"{1000 * alone['sdpa']:.1f} ms, matmul-softmax {1000 * alone['matmul']:.1f} ms "
              f"({alone['sdpa'] / alone['matmul']:.2f}x)")


if __name__ == "__main__":
    main()
