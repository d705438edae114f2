"""`preftune data inspect` and `preftune data convert`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import typer

from .common import data_app, user_errors


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
    from ..data.formats import read_pairs
    from ..data.unpaired import holds_unpaired_rows

    if format == "unpaired" or (format is None and holds_unpaired_rows(file)):
        return _inspect_unpaired(file, model, as_json)
    pairs, report = read_pairs(file, format=format)
    summary = report.to_dict()
    if model:
        from ..data.tokenize import PairTokenizer, token_checks
        from ..models.load import load_tokenizer

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
    from ..data.unpaired import read_unpaired

    examples, report = read_unpaired(file, format="unpaired")
    summary = report.to_dict() | {"desirable": sum(e.label for e in examples), "undesirable": sum(not e.label for e in examples)}
    if model:
        from ..data.tokenize import PairTokenizer
        from ..models.load import load_tokenizer

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
    from ..data.formats import read_pairs
    from ..data.schema import write_jsonl
    from ..data.unpaired import read_unpaired

    read = read_unpaired if unpaired or format == "unpaired" else read_pairs
    rows, report = read(file, format=format)
    write_jsonl(rows, out)
    dropped = sum(report.dropped.values())
    notes = "".join(f"; {note}" for note in report.notes)
    kind = "unpaired examples" if read is read_unpaired else "pairs"
    typer.echo(f"wrote {len(rows)} {kind} to {out} (read {report.rows_read} rows, dropped {dropped}{notes})")
