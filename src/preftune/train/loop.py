"""The bookkeeping every training loop starts, ends each step and ends the run with.

Each trainer keeps its own loop, top to bottom (DESIGN.md 2.2): what it samples, its forward and
loss, how it averages its metrics. What lives here is the part that must behave the same in all
of them, so that a fix to resume, signals, the NaN guards or the log cadence lands everywhere at
once: the optimizer, schedule, resume and checkpoints; the progress bar and signal handling
around the loop; the optimizer step of the offline trainers; what follows every step (evaluate,
log, progress, checkpoint, stop on a signal); and the end of the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config import TrainConfig
from ..runlog import RunLog
from . import common, distributed
from .setup import finish_run


def optimizer_schedule_and_log(config: TrainConfig, model: torch.nn.Module, total_steps: int, num_examples: int,
                               out: Path) -> tuple[torch.optim.Optimizer, object, common.DataOrder, RunLog]:  # fmt: skip
    """The optimizer over `model`, the schedule over `total_steps` (steps or iterations), the data
    order over `num_examples` and the run log (written by the main process only)."""
    optimizer = common.make_optimizer(model, config.lr, config.weight_decay)
    scheduler = common.make_scheduler(
        optimizer, config.scheduler, common.warmup_steps_of(config, total_steps), total_steps
    )
    order = common.DataOrder(num_examples, config.seed)
    log = RunLog(out, config, config.report_to, enabled=distributed.is_main())
    return optimizer, scheduler, order, log


def resume_if_asked(
    config: TrainConfig, out: Path, model, optimizer, scheduler, order, log
) -> tuple[int, int]:
    """(first step, tokens seen so far): from the latest checkpoint with --resume, else (0, 0)."""
    if not config.resume:
        return 0, 0
    start_step, extra = common.resume_latest(out, model, optimizer, scheduler, order, log)
    return start_step, extra.get("tokens_seen", 0)


def checkpoint_saver(config: TrainConfig, out: Path, model, tokenizer, optimizer, scheduler, order,
                     extra: Callable[[], dict] = dict) -> Callable[[int], None]:  # fmt: skip
    """`checkpoint(step)`: save what --resume needs. `extra()` is called at save time, so the loop's
    own running state (tokens seen, PPO's KL coefficient and value head) is saved as it is then."""

    def checkpoint(step: int) -> None:
        common.save_checkpoint(out, step, model, tokenizer, optimizer, scheduler, order, config, config.keep_last,
                               extra())  # fmt: skip

    return checkpoint


@contextmanager
def running(total_steps: int, start_step: int, show_progress: bool, label: str) -> Iterator[tuple]:
    """(progress bar, stop request) for the loop inside: SIGTERM/SIGINT become a flag that
    `finish_step` acts on, and the bar is closed however the loop ends (a signal exits by raising)."""
    progress = common.TrainProgress(total_steps, start_step, enabled=show_progress, label=label)
    stop = common.StopRequest()
    with stop.installed():
        try:
            yield progress, stop
        finally:
            progress.close()


def optimizer_step(config: TrainConfig, model, optimizer, scheduler, step_metrics: dict, step_number: int,
                   out: Path) -> None:  # fmt: skip
    """Clip to --max-grad-norm, refuse non-finite gradients, step, schedule, clear. Records
    `grad_norm` (before clipping) and `learning_rate` (the rate this step used: read before the
    schedule moves on)."""
    step_metrics["grad_norm"] = common.grad_norm_and_clip(model, config.max_grad_norm)
    common.check_finite_gradients(step_metrics["grad_norm"], step_number, out)
    step_metrics["learning_rate"] = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def finish_step(step: int, total_steps: int, metrics: dict, config: TrainConfig, *,
                evaluate: Callable[[], dict] | None, log: RunLog, progress: common.TrainProgress,
                progress_fields: dict[str, str], checkpoint: Callable[[int], None], stop: common.StopRequest,
                label: str, unit: str = "step", log_eval_steps: bool = True) -> None:  # fmt: skip
    """What follows step `step` (1-based, already taken) of `total_steps`, on every rank:

    agree on a stop signal; evaluate every --eval-every steps (not on the last: the run's end
    evaluates); log every --log-every steps, on the last, and (with `log_eval_steps`) on every
    step that evaluated; show `progress_fields` ({shown name: metric name}); checkpoint every
    --save-every steps or when stopping; then, on SIGTERM/SIGINT, exit 143/130 so --resume can
    continue. `evaluate` is None when there is nothing held out; its metrics join `metrics` in place.
    """
    stop.agree()  # a collective under torchrun: every rank stops after the same step
    if config.eval_every and evaluate is not None and step % config.eval_every == 0 and step < total_steps:
        metrics |= evaluate()
    evaluated = log_eval_steps and any(k.startswith("eval/") for k in metrics)
    if step % config.log_every == 0 or step == total_steps or evaluated:
        log.log(step, metrics)
    progress.update(step, {shown: metrics.get(name) for shown, name in progress_fields.items()})
    if (config.save_every and step % config.save_every == 0) or stop.requested:
        checkpoint(step)
    if stop.requested:
        print(f"\n{label}: {stop.requested} received; checkpoint saved at {unit} {step}; resume with --resume",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(143 if stop.requested == "SIGTERM" else 130)


def end_of_run(config: TrainConfig, step: int, *, evaluate: Callable[[], dict] | None, log: RunLog,
               checkpoint: Callable[[int], None], model, tokenizer, out: Path, train_metrics: dict,
               gather_weights: bool = True, truncation: dict | None = None,
               on_final_eval: Callable[[dict], None] | None = None) -> None:  # fmt: skip
    """The last evaluation (logged at the last step), the last checkpoint, then final/, summary.json
    and report.html (`finish_run`), written by the main process; the summary holds the final eval
    metrics and the last step's as "train/...". `gather_weights`: under FSDP every rank must join
    in gathering the full weights before rank 0 saves them (the offline trainers; the online ones
    save the policy as it is).
    `on_final_eval` sees the final eval metrics before anything is saved (a line for the user)."""
    final_metrics = evaluate() if evaluate is not None else {}
    if final_metrics:
        log.log(step, final_metrics)
        if on_final_eval is not None:
            on_final_eval(final_metrics)
    checkpoint(step)
    final_model = distributed.unsharded_model(model) if gather_weights else model
    if distributed.is_main():
        summary = final_metrics | {"train/" + k: v for k, v in train_metrics.items()}
        finish_run(config, final_model, tokenizer, out, summary, truncation=truncation)
    log.close()
