"""Run in a venv that has vLLM (see test_vllm_backend.py): sample through `--rollout-engine vllm`,
push changed weights, sample again, and print both results as JSON for the test to check."""

from __future__ import annotations

import json
import sys

import torch


def main() -> None:
    from preftune.models.tiny import tiny_model, tiny_tokenizer
    from preftune.rollout import RolloutEngine, SamplingParams

    settings = json.loads(sys.argv[1])
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer, seed=settings["seed"], **settings["config"]).eval()
    engine = RolloutEngine(model, tokenizer, backend="vllm", precision="fp32")
    params = SamplingParams(max_new_tokens=12, temperature=0.8, seed=0)
    before = engine.generate(settings["prompt_ids"], 3, params)
    with torch.no_grad():  # the "update": a deterministic change the test repeats on its side
        for parameter in model.parameters():
            parameter.mul_(settings["scale"])
    engine.load_weights(model)
    after = engine.generate(settings["prompt_ids"], 3, params)
    print(json.dumps({name: {"completion_ids": r.completion_ids, "logprobs": r.logprobs, "finished": r.finished}
                      for name, r in (("before", before), ("after", after))}))  # fmt: skip


if __name__ == "__main__":
    main()
