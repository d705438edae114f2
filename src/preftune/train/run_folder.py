"""Before a loop starts: make sure its run folder holds one run, and only that run.

Without this, reusing `--out` appends to the old `metrics.jsonl` (steps 1,2,3,1,2), leaves both
runs' checkpoints side by side, and a later `--resume` picks up whichever is newest, with other
data, lr or beta. So a folder that already holds a run is refused unless the user says which they
mean: `--resume` (continue it; the saved settings must match) or `--overwrite` (start over).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, config_to_dict
from . import distributed
from .common import checkpoint_dirs

# What a run writes into its folder; `--overwrite` removes exactly these and nothing else.
RUN_ARTIFACTS = ("config.yaml", "metrics.jsonl", "samples.jsonl", "checkpoints", "final", "summary.json",
                 "report.html", "tensorboard", "wandb")  # fmt: skip

# Settings that may change when a run is resumed: where and how fast it runs, how long it goes on,
# how often it logs and saves. Every other setting changes what is being trained.
RESUMABLE_CHANGES = frozenset({
    "resume", "overwrite", "out", "max_steps", "epochs", "iterations", "save_every", "keep_last", "log_every",
    "eval_every", "report_to", "device", "precision", "batching", "pack_length", "activation_checkpointing",
    "fsdp", "fsdp_offload", "dist_backend", "dist_timeout", "compile", "tf32", "rollout_engine",
})  # fmt: skip


def prepare_run_folder(config: Any) -> Path | None:
    """Check `config.out` against `--resume` / `--overwrite`; returns the checkpoint to resume from.

    Also removes the temp folders a `kill -9` during a save leaves behind (`.step-N.tmp-*`): a
    checkpoint is only ever renamed into place complete, so they are never worth keeping.
    """
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", 0, f"{out} is a file; give a folder for the run")
    existing = [name for name in RUN_ARTIFACTS if (out / name).exists()]
    if config.resume and config.overwrite:
        raise ConfigError("--overwrite", 0, "--resume continues the run in --out, --overwrite replaces it; pick one")
    if config.resume:
        found = checkpoint_dirs(out)
        if not found:
            raise ConfigError("--resume", 0, f"no checkpoint under {out / 'checkpoints'} to resume from")
        check_same_settings(config, found[-1])
        _remove_stale_temp_folders(out)
        return found[-1]
    if existing and not config.overwrite:
        raise ConfigError(
            "--out", 0,
            f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it or "
            "--overwrite to replace it, or choose another --out",
        )  # fmt: skip
    if existing and distributed.is_main():
        for name in existing:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    if distributed.is_main():
        _remove_stale_temp_folders(out)
    distributed.barrier()  # nobody starts writing before the old run is gone
    return None


def check_same_settings(config: Any, checkpoint: Path) -> None:
    """`--resume` continues the same run: refuse when a setting that shapes training differs."""
    saved_file = checkpoint / "preftune.yaml"
    try:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(saved_file, 0, f"cannot read the checkpoint's settings: {err}") from None
    current = config_to_dict(config)
    differs = [
        f"--{name.replace('_', '-')} {current[name]!r} (saved: {saved[name]!r})"
        for name in current
        if name in saved and name not in RESUMABLE_CHANGES and saved[name] != current[name]
    ]
    if differs:
        raise ConfigError(
            "--resume", 0,
            f"{checkpoint} was trained with other settings: {'; '.join(differs)}. Resume with the saved "
            f"settings (--config {saved_file}) or start a new run with --overwrite or another --out",
        )  # fmt: skip


def _remove_stale_temp_folders(out: Path) -> None:
    for folder in (out, out / "checkpoints"):
        if folder.is_dir():
            for leftover in folder.glob(".*.tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in folder.glob(".step-*.shards"):
                shutil.rmtree(leftover, ignore_errors=True)
