"""Judging what training gave: `preftune score` (a reward model on pairs), `preftune eval` (a
policy against its reference), `preftune report` (a run folder as one HTML page), and `preftune demo`
(the whole pipeline on its embedded defaults)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import app, fail, user_errors


@app.command("score")
@user_errors
def score(
    rm: Path = typer.Option(..., "--rm", help="Reward model folder written by `preftune rm` (its final/ or a checkpoint)."),
    data: Path = typer.Option(..., "--data", help="Preference pairs in any format `preftune data inspect` reads."),
    format: str = typer.Option(None, "--format", help="pairs | messages | hh | sharegpt (default: detect)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"pairs": n, "accuracy": a, "mean_margin": m}.'),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Pairs per forward pass."),
    max_length: int = typer.Option(1024, "--max-length", min=2, help="Max tokens of prompt + response."),
    max_prompt_length: int = typer.Option(512, "--max-prompt-length", min=1, help="Max prompt tokens."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Pairwise accuracy of a reward model on preference pairs: how often r(chosen) > r(rejected)."""
    from ..data.formats import read_pairs
    from ..models.reward_model import load_scalar_model
    from ..train.common import pick_device
    from ..train.reward import score_pairs

    if max_prompt_length >= max_length:
        fail(f"--max-prompt-length ({max_prompt_length}) must be below --max-length ({max_length})")
    pairs, _ = read_pairs(data, format=format)
    model, tokenizer = load_scalar_model(rm, device=pick_device(device))
    result = score_pairs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length,
                         max_prompt_length=max_prompt_length, source=str(data))  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['pairs']} pairs: accuracy {result['accuracy']:.4f}, mean margin {result['mean_margin']:.4f}")


@app.command("eval")
@user_errors
def evaluate(
    model: str = typer.Option(None, "--model", help="Policy to evaluate: local folder, hub name, or alias (smollm2-135m, tiny)."),
    ref: str = typer.Option(None, "--ref", help="Reference policy (usually the model training started from)."),
    prompts: Path = typer.Option(None, "--prompts", help='Held-out prompts: JSONL with a "prompt" (text or a list of messages) per line, or .txt lines.'),
    judge: list[str] = typer.Option([], "--judge", help="Judge to compare with: sentiment, readability or rm:DIR; repeat for several."),
    gold: str = typer.Option(None, "--gold", help="Held-out gold judge; the --judge(s) are then proxies and the gap is reported."),
    n: int = typer.Option(1, "-n", help="Samples per prompt from each model."),
    out: Path = typer.Option(..., "--out", help="Folder for eval.json, generations.jsonl and report.html."),
    max_prompts: int = typer.Option(0, "--max-prompts", min=0, help="Use the first N prompts (0: all)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature; the KL is between the two models at it."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling (below 1 biases the KL estimate)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed, the same for both models."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Sequences per generate / forward call."),
    tie_tolerance: float = typer.Option(0.0, "--tie-tolerance", min=0.0, help="Score differences at or below this are ties."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    human: str = typer.Option(None, "--human", help="Labeling database URL (as for `preftune serve --db`): add a policy-vs-reference project."),
    project: str = typer.Option(None, "--project", help="Labeling project name for --human / --from-labels (default: eval-<out folder>)."),
    from_labels: str = typer.Option(None, "--from-labels", help="Labeling database URL: turn the votes of --project into the win-rate report."),
    as_json: bool = typer.Option(False, "--json", help="Print eval.json to stdout instead of a table."),
) -> None:
    """Win rate (with CI and length control), KL, lengths and judge scores of a policy vs its reference."""
    from rich.console import Console

    from ..eval.run import EvalSettings, run_eval, summary_table, write_outputs

    if from_labels:
        from ..eval.human import human_report

        if not project:
            fail("--from-labels needs --project NAME")
        result = human_report(from_labels, project, seed=seed)
        write_outputs(out, result)
    else:
        missing = [flag for flag, value in (("--model", model), ("--ref", ref), ("--prompts", prompts)) if not value]
        if missing:
            fail(f"{', '.join(missing)} required (or --from-labels URL --project NAME)")
        settings = EvalSettings(model=model, ref=ref, prompts=str(prompts), out=str(out), judges=list(judge), gold=gold, n=n,
                                max_prompts=max_prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=seed, batch_size=batch_size, tie_tolerance=tie_tolerance, device=device, human=human,
                                project=project)  # fmt: skip
        result = run_eval(settings)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = Console()
    if result["judges"]:
        console.print(summary_table(result))
    if result.get("human"):
        h = result["human"]
        typer.echo(f"labeling project {h['project']!r}: {h['items']} items in {h['db']}; collect votes with "
                   f"`preftune serve --db {human}`, then `preftune eval --from-labels {human} --project {h['project']} --out {out}`")  # fmt: skip
    typer.echo(f"wrote {out / 'eval.json'} and {out / 'report.html'}")


@app.command("report")
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run folder (the --out of dpo, rm, ppo or sft)."),
    out: Path = typer.Option(None, "-o", "--out", help="Where to write the HTML (default: RUN_DIR/report.html)."),
) -> None:
    """Write a self-contained report.html (config, charts, final eval, samples) that opens offline."""
    from ..report import write_report

    try:
        path = write_report(run_dir, out)
    except (RuntimeError, OSError) as err:
        fail(f"{run_dir}: {err}")
    typer.echo(str(path))


@app.command("demo")
@user_errors
def demo(
    quick: bool = typer.Option(False, "--quick", help="Fewer prompts and shorter answers (a few minutes)."),
    human: bool = typer.Option(False, "--human", help="Label the pairs yourself in the labeling app instead of the judge."),
    ppo: bool = typer.Option(False, "--ppo", help="Also run PPO against the reward model, with and without the KL penalty (about 5 minutes more)."),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the pairs, runs, eval.json and report.html."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Teach SmolLM2-135M to explain things to a 5-year-old: sample, label, reward model, DPO (--ppo: and PPO), evaluate."""
    from ..demo import run_demo

    run_demo(out=str(out), quick=quick, human=human, ppo=ppo, seed=seed)
