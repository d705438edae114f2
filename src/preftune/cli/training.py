"""The trainers, one command each: `preftune sft`, `dpo`, `kto`, `rm`, `ppo`, `grpo`, `online-dpo`.

Each command's flags are generated from its config class (`add_config_command`), so a setting's
name, type and help live in one place, config.py.
"""

from __future__ import annotations

import importlib
import typing

import typer

from ..config import DPOConfig, GRPOConfig, KTOConfig, OnlineDPOConfig, PPOConfig, RMConfig, SFTConfig
from .common import add_config_command


def _runner(module: str, function: str) -> typing.Callable:
    """Run one trainer and print its run folder. The trainer is imported when the command runs, so
    `preftune --help` does not load torch and transformers."""

    def run(config):
        train = getattr(importlib.import_module(f"preftune.train.{module}"), function)
        typer.echo(f"run folder: {train(config)}")

    return run


TRAINERS = (
    ("sft", SFTConfig, _runner("sft", "train_sft"),
     "Supervised fine-tuning on responses (chosen side of pairs, or prompt/response rows)."),
    ("dpo", DPOConfig, _runner("dpo", "train_dpo"),
     "Align a policy directly on preference pairs with DPO or a variant."),
    ("kto", KTOConfig, _runner("kto", "train_kto"),
     "Align a policy on single answers marked good or bad (thumbs; KTO), or on pairs split into such answers."),
    ("rm", RMConfig, _runner("reward", "train_reward_model"),
     "Train a Bradley-Terry reward model (trunk + scalar head) on preference pairs."),
    ("ppo", PPOConfig, _runner("ppo", "train_ppo"),
     "RLHF with PPO under a KL penalty, rewarded by a reward model (rm:DIR) or a judge."),
    ("grpo", GRPOConfig, _runner("grpo", "train_grpo"),
     "Online RL with a group baseline (GRPO, Dr. GRPO, RLOO, REINFORCE++), rewarded by verifiable checks, a judge, rm:DIR or python:MODULE:FUNCTION."),
    ("online-dpo", OnlineDPOConfig, _runner("online_dpo", "train_online_dpo"),
     "Online DPO: two samples per prompt from the policy, a judge or rm:DIR picks the winner live, the DPO loss learns from it."),
)  # fmt: skip

for name, config_class, run, summary in TRAINERS:
    add_config_command(name, config_class, run, summary)
