"""Sampling: `preftune generate` and `preftune bon` (best-of-n)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..config import ROLLOUT_ENGINE_HELP, ROLLOUT_PRECISION_HELP, BoNConfig
from .common import add_config_command, app, fail, user_errors


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


def _best_of_n(config) -> None:
    """Run best-of-n and print its summary as one JSON line."""
    from ..bon import run_best_of_n

    typer.echo(json.dumps(run_best_of_n(config)))


# The flags come from BoNConfig (config.py), so the command and `--config` files never drift apart.
add_config_command(
    "bon", BoNConfig, _best_of_n,
    "Best-of-n: sample n completions per prompt, keep the best; prints the mean kept score and the "
    "KL of best-of-n, log n - (n-1)/n, for n and each power of two below it.",
    short_flags={"n": "-n", "out": "-o"},
)  # fmt: skip
