"""Getting a training run ready and wrapping it up: model, data splits, tokens, the final save.

Shared by every loop so that each loop file reads as the algorithm alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..config import ConfigError, TrainConfig
from ..data.formats import read_pairs
from ..data.schema import DataError, PreferencePair
from ..data.tokenize import PairTokenizer, TokenizedPair
from ..models.checkpointing import enable_activation_checkpointing
from ..models.load import LoraSettings, load_policy, save_model


def load_model_for_training(config: TrainConfig, device: torch.device):
    """The policy (with fresh LoRA adapters when --lora) and its tokenizer, on `device`, fp32 weights."""
    lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout) if config.lora else None
    model, tokenizer = load_policy(config.model, lora=lora, device=device, seed=config.seed)
    if lora is not None:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(f"lora: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)", file=sys.stderr)
    enable_activation_checkpointing(model, config.activation_checkpointing)
    return model, tokenizer


def _report_line(report) -> str:
    dropped = ", ".join(f"{reason}: {count}" for reason, count in report.dropped.items()) or "none"
    notes = "".join(f"; {note}" for note in report.notes)
    kept = "examples" if "unpaired" in report.format else "pairs"
    return f"{report.path}: {report.rows_read} rows read, {report.pairs_kept} {kept} kept, dropped: {dropped}{notes}"


def load_pair_splits(
    config: TrainConfig, reader=read_pairs, group_key=None
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Training pairs and held-out pairs (from --eval-data, or a seeded --eval-split of --data).
    `reader` may be another reader with read_pairs' signature (KTO's `read_unpaired`); with
    `group_key`, --eval-split holds out that fraction of the groups (KTO: of the prompts), whole."""
    train, report = reader(config.data, format=config.format)
    print(_report_line(report), file=sys.stderr)
    if config.eval_data:
        held_out, eval_report = reader(config.eval_data, format=config.format)
        print(_report_line(eval_report), file=sys.stderr)
        return train, held_out
    if config.eval_split > 0 and group_key is not None:
        # A prompt's answers all on one side: an answer held out while its twin (the other half of
        # a pair, another thumb on the same prompt) trains would make the eval look better than it is.
        keys = list(dict.fromkeys(group_key(x) for x in train))
        count = int(round(config.eval_split * len(keys)))
        if count < 1 or count >= len(keys):
            raise DataError(config.data, 0, f"--eval-split {config.eval_split} leaves no prompts on one side of {len(keys)}")
        order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(config.seed)).tolist()
        held = {keys[i] for i in order[:count]}
        return [x for x in train if group_key(x) not in held], [x for x in train if group_key(x) in held]
    if config.eval_split > 0:
        count = int(round(config.eval_split * len(train)))
        if count < 1 or count >= len(train):
            raise DataError(config.data, 0, f"--eval-split {config.eval_split} leaves no pairs on one side of {len(train)}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
        return [train[i] for i in order[count:]], [train[i] for i in order[:count]]
    return train, []


def tokenize_pairs(config: TrainConfig, tokenizer, train: list[PreferencePair], held_out: list[PreferencePair]):
    """Tokenize both splits through the one path; report what truncation did."""
    if config.max_prompt_length >= config.max_length:
        raise ConfigError("--max-prompt-length", 0, f"{config.max_prompt_length} must be below --max-length {config.max_length}")
    pair_tokenizer = PairTokenizer(tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length)
    train_tokens: list[TokenizedPair] = [pair_tokenizer(p) for p in train]
    eval_tokens: list[TokenizedPair] = [pair_tokenizer(p) for p in held_out]
    stats = pair_tokenizer.stats.to_dict()
    if stats["prompts_truncated"] or stats["responses_truncated"]:
        print(
            f"truncation (max_length={config.max_length}, max_prompt_length={config.max_prompt_length}): "
            f"{stats['prompts_truncated']} prompts, {stats['responses_truncated']} responses of {2 * stats['pairs']}",
            file=sys.stderr,
        )
    return train_tokens, eval_tokens, stats


def finish_run(config: TrainConfig, model, tokenizer, out: Path, summary: dict, truncation: dict | None = None) -> Path:
    """Write final/ (full model, or the adapter with --lora; plus final/merged with --merge), summary.json
    (with the run's reward-hacking warnings) and report.html; print the warnings last, on stderr."""
    final = save_model(model, tokenizer, out / "final")
    if config.lora and config.merge:
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        save_model(merged, tokenizer, out / "final" / "merged")
    from ..eval.hacking import check_run, print_warnings

    try:
        warnings = check_run(out)
    except Exception as err:  # noqa: BLE001 - a detector bug must not lose a finished run
        print(f"reward-hacking checks: failed on {out}: {type(err).__name__}: {err}", file=sys.stderr)
        warnings = None
    payload = {"final": str(final), "metrics": summary, "truncation": truncation or {},
               "warnings": None if warnings is None else [w.to_dict() for w in warnings]}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"final model: {final}", file=sys.stderr)
    write_run_report(out)
    if warnings is not None:
        print_warnings(warnings)
    return final


def write_run_report(out: Path) -> Path | None:
    """The run's report.html; a failure is printed, never raised: the trained model is what matters."""
    from ..report import write_report

    try:
        path = write_report(out)
    except Exception as err:  # noqa: BLE001 - any reporting bug must not lose a finished run
        print(f"report: could not write {out / 'report.html'}: {type(err).__name__}: {err} "
              f"(retry with `preftune report {out}`)", file=sys.stderr)  # fmt: skip
        return None
    print(f"report: {path}", file=sys.stderr)
    return path
