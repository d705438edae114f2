"""Sampling: `preftune generate` and `preftune bon` (best-of-n)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..config import ROLLOUT_ENGINE_HELP, ROLLOUT_PRECISION_HELP
from .common import app, fail, user_errors


@app.command("generate")
@user_errors
def generate(
    model: str = typer.Option(..., "--model", help="Local folder, hub name, or alias (smollm2-135m, tiny)."),
    prompts: Path = typer.Option(..., "--prompts", help='JSONL of {"prompt": str | [messages]}, or text, one prompt per line.'),
    n: int = typer.Option(1, "-n", min=1, help="Completions per prompt."),
    out: Path = typer.Option(..., "-o", "--out", help='JSONL to write: {"prompt": ..., "completions": [...]} per line.'),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0),
    top_p: float = typer.Option(0.9, "--top-p", min=0.0, max=1.0),
    top_k: int = typer.Option(0, "--top-k", min=0, help="Top-k sampling (0: off)."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Sequences per generate call (--rollout-engine hf only)."),
    rollout_engine: str = typer.Option("auto", "--rollout-engine", help=ROLLOUT_ENGINE_HELP),
    precision: str = typer.Option("auto", "--precision", help=ROLLOUT_PRECISION_HELP),
) -> None:
    """Sample completions for each prompt (the rollout engine: continuous batching, seeded, stops at EOS)."""
    from ..data.formats import read_prompts
    from ..generate import generate_completions
    from ..models.load import load_policy
    from ..rollout import BACKENDS, PRECISIONS

    if temperature <= 0:
        fail("--temperature must be > 0")
    if rollout_engine not in BACKENDS:
        fail(f"--rollout-engine: must be one of {', '.join(BACKENDS)}, got {rollout_engine!r}")
    if precision not in PRECISIONS:
        fail(f"--precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    prompt_messages = read_prompts(prompts)
    policy, tokenizer = load_policy(model)
    result = generate_completions(
        policy,
        tokenizer,
        prompt_messages,
        n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        batch_size=batch_size,
        show_progress=True,
        rollout_engine=rollout_engine,
        precision=precision,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for messages, completions in zip(prompt_messages, result.texts, strict=True):
            prompt = messages[0].content if len(messages) == 1 and messages[0].role == "user" else [m.to_dict() for m in messages]
            handle.write(json.dumps({"prompt": prompt, "completions": completions}, ensure_ascii=False) + "\n")
    typer.echo(
        f"wrote {len(prompt_messages)} prompts x {n} completions to {out}: "
        f"{result.new_tokens} tokens in {result.seconds:.1f}s ({result.tokens_per_second:.1f} tokens/s)"
    )


@app.command("bon")
@user_errors
def bon(
    model: str = typer.Option(..., "--model", help="Policy to sample from: local folder, hub name, or alias (smollm2-135m, tiny)."),
    reward: str = typer.Option(..., "--reward", help="What picks the best: rm:DIR, judge:sentiment or judge:readability."),
    prompts: Path = typer.Option(..., "--prompts", help='JSONL of {"prompt": str | [messages]}, or .txt, one prompt per line.'),
    n: int = typer.Option(16, "-n", help="Completions sampled per prompt."),
    out: Path = typer.Option(..., "-o", "--out", help="JSONL to write: prompt, best response, its score, all n scores."),
    gold: str = typer.Option(None, "--gold", help="Optional second judge scoring the kept completion."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", min=1),
    temperature: float = typer.Option(1.0, "--temperature", help="The KL figure is relative to this sampling distribution."),
    top_k: int = typer.Option(0, "--top-k", min=0),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Sequences per generate call."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    rollout_engine: str = typer.Option("auto", "--rollout-engine", help=ROLLOUT_ENGINE_HELP),
    rollout_precision: str = typer.Option("auto", "--rollout-precision", help=ROLLOUT_PRECISION_HELP),
) -> None:
    """Best-of-n: sample n completions per prompt, keep the best; prints the mean kept score and
    the KL of best-of-n, log n - (n-1)/n, for n and each power of two below it."""
    from ..bon import run_best_of_n
    from ..config import BoNConfig, resolve_config

    settings = dict(model=model, reward=reward, prompts=str(prompts), n=n, out=str(out), gold=gold,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                    batch_size=batch_size, device=device, rollout_engine=rollout_engine,
                    rollout_precision=rollout_precision)  # fmt: skip
    typer.echo(json.dumps(run_best_of_n(resolve_config(BoNConfig, None, settings))))
