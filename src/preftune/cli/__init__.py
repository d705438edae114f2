"""`preftune ...`: thin. Each command parses its flags, resolves its config and calls one function.

Every error a user can cause (bad file, bad flag, model that won't load) ends as one line on
stderr, `error: FILE:LINE: reason`, and exit code 2; never a traceback.

One module per group of commands; importing a module registers its commands on `app`, in the
order `preftune --help` lists them:
- sampling.py: generate, bon
- labeling.py: serve, admin-link, export, judge
- training.py: sft, dpo, kto, rm, ppo, grpo, online-dpo
- evaluation.py: score, eval, report, demo
- data.py: data inspect, data convert
common.py holds the app, the one-line errors and the config-generated commands; errors.py, click's
own usage errors.
"""

from __future__ import annotations

from .common import app

# Each import registers its module's commands; the order is the order of `preftune --help`.
# isort: off
from . import sampling, labeling, training, evaluation, data  # noqa: E402, F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    app()
