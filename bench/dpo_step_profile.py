"""One DPO forward+backward on 8 demo pairs, `--batching fast`: 4-D mask against span attention.

    .venv/bin/python bench/dpo_step_profile.py            # fp32 and bf16, 3 timed steps each

What the fast layout's attention costs: the same packed batch (the first 8 pairs of
`../shared/data/dpo_en_demo.json`, SmolLM2-135M-Instruct, max length 512) through the policy's
forward and backward, once with the rows' 4-D mask given to SDPA (every query against every key
of its row, the masked scores computed and thrown away), once with `models.span_attention` (one
SDPA call per span). Each setting runs in a fresh subprocess after one untimed step; the table
gives the timed steps. The CPU allocator setting of `train.common.keep_freed_cpu_memory` is on in
both, as in training.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from dpo_throughput import SHARED_DATA, _set_threads


def worker(precision: str, attention: str, steps: int, threads: int) -> list[float]:
    import torch

    from preftune.data.batching import collate_pairs
    from preftune.data.formats import read_pairs
    from preftune.data.tokenize import PairTokenizer
    from preftune.models import logprobs
    from preftune.models.load import load_policy
    from preftune.train.common import keep_freed_cpu_memory

    _set_threads(threads)
    keep_freed_cpu_memory()
    model, tokenizer = load_policy("smollm2-135m", device="cpu")
    model.train()
    pairs, _ = read_pairs(SHARED_DATA / "dpo_en_demo.json")
    pair_tokenizer = PairTokenizer(tokenizer, max_length=512, max_prompt_length=256)
    batch = collate_pairs([pair_tokenizer(p) for p in pairs[:8]], tokenizer.pad_token_id, "fast")
    if attention == "mask":  # what `packed_outputs` did before span attention: the 4-D mask alone
        def masked_outputs(run, model, batch):
            outputs = []
            for group in batch.groups:
                mask = logprobs.attention_mask_for(model, group.attention_mask)
                out = run(group.input_ids, mask, group.position_ids)
                outputs.append(out.reshape(-1, *out.shape[2:]))
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

        logprobs.packed_outputs = masked_outputs
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> float:
        start = time.perf_counter()
        with autocast:
            out = logprobs.pair_logprobs(model, batch)
        (out["chosen_logps"] - out["rejected_logps"]).mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()
    return [step() for _ in range(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.threads)))
        return
    print(f"{'precision':9} {'attention':9} {'s/step (timed steps)':>28} {'best':>6}")
    for precision in args.precisions.split(","):
        for attention in ("mask", "spans"):
            command = [sys.executable, __file__, "--worker", precision, attention,
                       "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            seconds = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{precision:9} {attention:9} {', '.join(f'{s:.1f}' for s in seconds):>28} {min(seconds):6.1f}")


if __name__ == "__main__":
    main()
