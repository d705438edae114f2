"""`preftune ...`: thin. Each command parses its flags, resolves its config and calls one function.

Every error a user can cause (bad file, bad flag, model that won't load) ends as one line on
stderr, `error: FILE:LINE: reason`, and exit code 2; never a traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import statistics
import sys
import types
import typing
from functools import wraps
from pathlib import Path

import typer

from . import __version__
from .cli_errors import BOOL_FLAGS, OneLineErrors
from .config import ROLLOUT_ENGINE_HELP, ROLLOUT_PRECISION_HELP
from .data.schema import DataError

app = typer.Typer(
    name="preftune",
    help="Preference tuning for language models: label, train reward models, PPO, DPO, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
    # Plain help: rich markup would swallow "[default: 0.1]", "[required]" and "str | [messages]".
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Inspect and convert preference data.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command):
    """Turn the errors a user can cause into one line and exit code 2."""

    @wraps(command)
    def run(*args, **kwargs):
        from .models.load import ModelLoadError
        from .train.common import TrainingDiverged

        try:
            return command(*args, **kwargs)
        except (DataError, ModelLoadError) as err:
            _fail(str(err))
        except TrainingDiverged as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as err:
            # Under torchrun: a collective that failed because another worker died or hung.
            explained = _distributed_failure(err)
            if explained is None:
                raise
            typer.echo(f"error: {explained}", err=True)
            raise typer.Exit(1) from None

    return run


def _distributed_failure(err: BaseException) -> str | None:
    if "torch.distributed" not in sys.modules:  # no training ran: nothing distributed to explain
        return None
    from .train.distributed import describe_failure

    return describe_failure(err)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"preftune {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Preference tuning for language models."""


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {"p50": 0, "p95": 0}
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    return {"p50": float(statistics.median(ordered)), "p95": float(cut[94])}


@data_app.command("inspect")
@user_errors
def data_inspect(
    file: Path = typer.Argument(..., help="Preference data: .jsonl, .json, .parquet, .csv, a datasets folder, or a hub name."),
    format: str = typer.Option(None, "--format", help="pairs | messages | hh | sharegpt | unpaired (default: detect)."),
    model: str = typer.Option(None, "--model", help="Also tokenize with this model's tokenizer and check the guarantees."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Count rows, kept pairs and drops by reason; with --model, token lengths and token checks."""
    from .data.formats import read_pairs
    from .data.unpaired import holds_unpaired_rows

    if format == "unpaired" or (format is None and holds_unpaired_rows(file)):
        return _inspect_unpaired(file, model, as_json)
    pairs, report = read_pairs(file, format=format)
    summary = report.to_dict()
    if model:
        from .data.tokenize import PairTokenizer, token_checks
        from .models.load import load_tokenizer

        # No truncation here: inspect reports the data's real lengths.
        pair_tokenizer = PairTokenizer(load_tokenizer(model), max_length=10**9, max_prompt_length=10**9 - 1)
        tokenized = [pair_tokenizer(p) for p in pairs]
        summary["tokens"] = {
            "prompt": _percentiles([len(t.prompt_ids) for t in tokenized]),
            "chosen": _percentiles([len(t.chosen_ids) for t in tokenized]),
            "rejected": _percentiles([len(t.rejected_ids) for t in tokenized]),
        }
        summary["token_checks"] = token_checks(pair_tokenizer, pairs)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_inspect(summary)


def _inspect_unpaired(file: Path, model: str | None, as_json: bool) -> None:
    """`data inspect` of unpaired (KTO) rows: counts by label; with --model, token lengths."""
    from .data.unpaired import read_unpaired

    examples, report = read_unpaired(file, format="unpaired")
    summary = report.to_dict() | {"desirable": sum(e.label for e in examples), "undesirable": sum(not e.label for e in examples)}
    if model:
        from .data.tokenize import PairTokenizer
        from .models.load import load_tokenizer

        tokenizer = PairTokenizer(load_tokenizer(model), max_length=10**9, max_prompt_length=10**9 - 1)
        tokenized = [tokenizer.tokenize_unpaired(e) for e in examples]
        summary["tokens"] = {"prompt": _percentiles([len(t.prompt_ids) for t in tokenized]),
                             "completion": _percentiles([len(t.completion_ids) for t in tokenized])}  # fmt: skip
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_inspect(summary)


def _print_inspect(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['path']} ({summary['format']})", show_header=False)
    table.add_row("rows read", str(summary["rows_read"]))
    if summary["format"] == "unpaired":
        table.add_row("examples kept", f"{summary['pairs_kept']} ({summary['desirable']} desirable, {summary['undesirable']} undesirable)")
    else:
        table.add_row("pairs kept", str(summary["pairs_kept"]))
    for reason, count in summary["dropped"].items():
        table.add_row(f"dropped: {reason}", str(count))
    for note in summary.get("notes", []):
        table.add_row("note", note)
    for part, stats in summary.get("tokens", {}).items():
        table.add_row(f"{part} tokens p50 / p95", f"{stats['p50']:.0f} / {stats['p95']:.0f}")
    for check, count in summary.get("token_checks", {}).items():
        table.add_row(check, str(count))
    Console().print(table)


@data_app.command("convert")
@user_errors
def data_convert(
    file: Path = typer.Argument(..., help="Preference data in any supported format."),
    out: Path = typer.Option(..., "-o", "--out", help="Canonical JSONL to write."),
    format: str = typer.Option(None, "--format", help="pairs | messages | hh | sharegpt | unpaired (default: detect)."),
    unpaired: bool = typer.Option(False, "--unpaired", help='Write unpaired rows {"prompt", "completion", "label"} (KTO\'s format): each pair as chosen -> true, rejected -> false.'),
) -> None:
    """Write the canonical JSONL (one PreferencePair per line); it reads back to the same pairs."""
    from .data.formats import read_pairs
    from .data.schema import write_jsonl
    from .data.unpaired import read_unpaired

    read = read_unpaired if unpaired or format == "unpaired" else read_pairs
    rows, report = read(file, format=format)
    write_jsonl(rows, out)
    dropped = sum(report.dropped.values())
    notes = "".join(f"; {note}" for note in report.notes)
    kind = "unpaired examples" if read is read_unpaired else "pairs"
    typer.echo(f"wrote {len(rows)} {kind} to {out} (read {report.rows_read} rows, dropped {dropped}{notes})")


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
    from .data.formats import read_prompts
    from .generate import generate_completions
    from .models.load import load_policy
    from .rollout import BACKENDS, PRECISIONS

    if temperature <= 0:
        _fail("--temperature must be > 0")
    if rollout_engine not in BACKENDS:
        _fail(f"--rollout-engine: must be one of {', '.join(BACKENDS)}, got {rollout_engine!r}")
    if precision not in PRECISIONS:
        _fail(f"--precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
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


def _metavar(annotation, check=None) -> str:
    """How --help names a flag's value; the value itself is checked by config.resolve_config."""
    if check is not None and check.choices:
        return "|".join(check.choices)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args else annotation
    if typing.get_origin(base) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(base))
    return {int: "INT", float: "FLOAT"}.get(base, "LIST" if typing.get_origin(base) is list else "TEXT")


def add_config_command(name: str, config_class: type, run: typing.Callable, summary: str) -> None:
    """Register `preftune NAME` with one flag per config field, plus --config FILE.yaml.

    The flags are generated from the dataclass, so a setting's name, type and help live in one
    place (the config class) and `--config` files use exactly the same names.
    """
    hints = typing.get_type_hints(config_class)
    params = [
        inspect.Parameter(
            "config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--config", help="YAML file of settings; flags override it."),
        )
    ]  # fmt: skip
    BOOL_FLAGS[name] = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(config_class) if hints[f.name] is bool}
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        decl = f"{flag}/--no-{field.name.replace('_', '-')}" if hints[field.name] is bool else flag
        help_text = field.metadata.get("help", "")
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            help_text += " [required]"
        elif field.default not in (dataclasses.MISSING, None, ""):
            help_text += f" [default: {field.default}]"
        params.append(
            inspect.Parameter(
                # Values arrive as text and are checked by resolve_config, so a bad value gets the
                # same one-line "--flag: reason" error from a flag as from a config file.
                field.name, inspect.Parameter.KEYWORD_ONLY,
                annotation=bool | None if hints[field.name] is bool else str | None,
                default=typer.Option(None, decl, help=help_text, show_default=False, metavar=_metavar(hints[field.name], field.metadata.get("check"))),
            )
        )  # fmt: skip

    def command(config_file: Path | None = None, **flags):
        from .config import resolve_config

        result = run(resolve_config(config_class, config_file, flags))
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group cleanly
            from .train.distributed import shutdown

            shutdown()
        return result

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = summary
    app.command(name, help=summary)(user_errors(command))


def _run_dpo(config):
    from .train.dpo import train_dpo

    out = train_dpo(config)
    typer.echo(f"run folder: {out}")


def _run_sft(config):
    from .train.sft import train_sft

    typer.echo(f"run folder: {train_sft(config)}")


def _register_training_commands() -> None:
    from .config import DPOConfig, SFTConfig

    add_config_command("sft", SFTConfig, _run_sft, "Supervised fine-tuning on responses (chosen side of pairs, or prompt/response rows).")

    add_config_command("dpo", DPOConfig, _run_dpo, "Align a policy directly on preference pairs with DPO or a variant.")


_register_training_commands()


# ---- KTO: `preftune kto`, learning from thumbs up / down on single answers ------------------------


def _run_kto(config):
    from .train.kto import train_kto

    typer.echo(f"run folder: {train_kto(config)}")


def _register_kto_command() -> None:
    from .config import KTOConfig

    add_config_command("kto", KTOConfig, _run_kto, "Align a policy on single answers marked good or bad (thumbs; KTO), or on pairs split into such answers.")


_register_kto_command()


# ---- reward models: `preftune rm`, `preftune score` ---------------------------------------------


def _run_rm(config):
    from .train.reward import train_reward_model

    out = train_reward_model(config)
    typer.echo(f"run folder: {out}")


def _register_reward_commands() -> None:
    from .config import RMConfig

    add_config_command("rm", RMConfig, _run_rm, "Train a Bradley-Terry reward model (trunk + scalar head) on preference pairs.")


_register_reward_commands()


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
    from .data.formats import read_pairs
    from .models.reward_model import load_scalar_model
    from .train.common import pick_device
    from .train.reward import score_pairs

    if max_prompt_length >= max_length:
        _fail(f"--max-prompt-length ({max_prompt_length}) must be below --max-length ({max_length})")
    pairs, _ = read_pairs(data, format=format)
    model, tokenizer = load_scalar_model(rm, device=pick_device(device))
    result = score_pairs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length,
                         max_prompt_length=max_prompt_length, source=str(data))  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['pairs']} pairs: accuracy {result['accuracy']:.4f}, mean margin {result['mean_margin']:.4f}")


# ---- the labeling app: `preftune serve`, `preftune export`, `preftune judge` ----------------------


@app.command("serve")
@user_errors
def serve(
    db: str = typer.Option("sqlite:///preftune.db", "--db", help="Database URL: sqlite:///FILE (default) or postgresql://..."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback prints a warning."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    runs: Path = typer.Option(None, "--runs", help="Folder of run folders: the dashboard at /runs follows them live."),
    base_url: str = typer.Option(None, "--base-url", help="Address people open (login links use it; other Host names are refused). Default: the bound address."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Server processes (PostgreSQL scales with them; SQLite has one writer)."),
) -> None:
    """Run the labeling app, the training dashboard (/runs) and the playground (/playground)."""
    from .web.app import serve as run_server

    _check_port_free(host, port)
    try:
        run_server(db=db, host=host, port=port, runs=runs, base_url=base_url, workers=workers)
    except (ValueError, RuntimeError) as err:
        _fail(str(err))


@app.command("admin-link")
@user_errors
def admin_link(
    db: str = typer.Option(..., "--db", help="Database URL the labeling app uses (as for `preftune serve --db`)."),
    base_url: str = typer.Option("http://127.0.0.1:8000", "--base-url", help="Address the server is reached at."),
) -> None:
    """Print a new admin login link; the old one (and the sessions it opened) stop working."""
    from .web.app import admin_link as new_admin_link

    try:
        typer.echo(new_admin_link(db, base_url))
    except (ValueError, RuntimeError) as err:
        _fail(str(err))


def _check_port_free(host: str, port: int) -> None:
    """A busy port is one line and exit 2 here, before uvicorn logs a traceback-like error."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            _fail(f"--port {port}: cannot listen on {host}:{port}: {err.strerror or err} (another server there? pick another --port)")


@app.command("report")
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run folder (the --out of dpo, rm, ppo or sft)."),
    out: Path = typer.Option(None, "-o", "--out", help="Where to write the HTML (default: RUN_DIR/report.html)."),
) -> None:
    """Write a self-contained report.html (config, charts, final eval, samples) that opens offline."""
    from .report import write_report

    try:
        path = write_report(run_dir, out)
    except (RuntimeError, OSError) as err:
        _fail(f"{run_dir}: {err}")
    typer.echo(str(path))


@app.command("export")
@user_errors
def export(
    db: str = typer.Option(..., "--db", help="Database URL the labeling app used."),
    project: str = typer.Option(..., "--project", help="Project name (or id)."),
    out: Path = typer.Option(..., "-o", "--out", help="Canonical pairs JSONL to write (read by `preftune dpo` and `rm`)."),
    min_votes: int = typer.Option(1, "--min-votes", min=1, help="Keep items with at least this many counted votes."),
    drop: str = typer.Option("ties,both_bad", "--drop", help="Outcomes to leave out: ties, both_bad (comma-separated)."),
    datasets_dir: Path = typer.Option(None, "--datasets-dir", help="Also write a `datasets` folder here."),
    unpaired: bool = typer.Option(False, "--unpaired", help='Write unpaired rows {"prompt", "completion", "label"} (KTO\'s format): winner true, loser false. A thumbs project always exports them.'),
) -> None:
    """Aggregate votes by majority into preference pairs (strength becomes `margin`), or a thumbs
    project's votes into unpaired rows for `preftune kto`."""
    from .web.export import export_project

    try:
        report = export_project(db, project, out, min_votes=min_votes, drop=drop, datasets_dir=datasets_dir,
                                unpaired=unpaired)  # fmt: skip
    except (ValueError, RuntimeError) as err:
        _fail(str(err))
    typer.echo(report.summary())


@app.command("judge")
@user_errors
def judge(
    judge_name: str = typer.Option(..., "--judge", help="sentiment, readability, or rm:DIR (a trained reward model)."),
    candidates: Path = typer.Option(..., "--candidates", help="`preftune generate` output (2+ completions per prompt) or pairs."),
    out: Path = typer.Option(..., "-o", "--out", help="Pairs JSONL to write, labelled by the judge."),
) -> None:
    """Label candidate answers with a judge or reward model (AI feedback) and write pairs."""
    from .judges import judge_file

    try:
        report = judge_file(judge_name, candidates, out)
    except (ValueError, RuntimeError) as err:
        _fail(str(err))
    typer.echo(report.summary())


# ---- RLHF: `preftune ppo`, `preftune bon` ------------------------------------------------------


def _run_ppo(config):
    from .train.ppo import train_ppo

    out = train_ppo(config)
    typer.echo(f"run folder: {out}")


def _register_ppo_command() -> None:
    from .config import PPOConfig

    add_config_command("ppo", PPOConfig, _run_ppo, "RLHF with PPO under a KL penalty, rewarded by a reward model (rm:DIR) or a judge.")


_register_ppo_command()


# ---- online RL: `preftune grpo`, `preftune online-dpo` (issue 16) ---------------------------------


def _run_grpo(config):
    from .train.grpo import train_grpo

    typer.echo(f"run folder: {train_grpo(config)}")


def _run_online_dpo(config):
    from .train.online_dpo import train_online_dpo

    typer.echo(f"run folder: {train_online_dpo(config)}")


def _register_online_rl_commands() -> None:
    from .config import GRPOConfig, OnlineDPOConfig

    add_config_command("grpo", GRPOConfig, _run_grpo, "Online RL with a group baseline (GRPO, Dr. GRPO, RLOO, REINFORCE++), rewarded by verifiable checks, a judge, rm:DIR or python:MODULE:FUNCTION.")
    add_config_command("online-dpo", OnlineDPOConfig, _run_online_dpo, "Online DPO: two samples per prompt from the policy, a judge or rm:DIR picks the winner live, the DPO loss learns from it.")


_register_online_rl_commands()


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
) -> None:
    """Best-of-n: sample n completions per prompt, keep the best; prints the mean kept score and
    the KL of best-of-n, log n - (n-1)/n, for n and each power of two below it."""
    from .bon import run_best_of_n
    from .config import BoNConfig, resolve_config

    settings = dict(model=model, reward=reward, prompts=str(prompts), n=n, out=str(out), gold=gold,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                    batch_size=batch_size, device=device)  # fmt: skip
    typer.echo(json.dumps(run_best_of_n(resolve_config(BoNConfig, None, settings))))


# ---- evaluation: `preftune eval` -----------------------------------------------------------------


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

    from .eval.run import EvalSettings, run_eval, summary_table, write_outputs

    if from_labels:
        from .eval.human import human_report

        if not project:
            _fail("--from-labels needs --project NAME")
        result = human_report(from_labels, project, seed=seed)
        write_outputs(out, result)
    else:
        missing = [flag for flag, value in (("--model", model), ("--ref", ref), ("--prompts", prompts)) if not value]
        if missing:
            _fail(f"{', '.join(missing)} required (or --from-labels URL --project NAME)")
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
    from .demo import run_demo

    run_demo(out=str(out), quick=quick, human=human, ppo=ppo, seed=seed)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
