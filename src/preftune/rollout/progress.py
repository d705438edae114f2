"""Progress of a rollout: a rich bar on a terminal, a plain line every ~15 s in a log.

A log of `preftune demo` used to stay silent for ten minutes while it sampled. When stderr is
not a terminal, `RolloutProgress` prints `label: done/total sequences, tokens, tok/s, ETA` at
most every `interval` seconds (and once at the end), so a CI log or `nohup` file shows life.
The ETA counts each unfinished sequence as its full `max_new_tokens` budget: an upper bound that
tightens as sequences end at EOS.
"""

from __future__ import annotations

import sys
import time


class RolloutProgress:
    def __init__(
        self, label: str, sequences: int, max_new_tokens: int, *, interval: float = 15.0, stream=None, live: bool | None = None
    ):
        self.label, self.total, self.budget_each = label, sequences, max_new_tokens
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval
        self.done = 0
        self.new_tokens = 0
        self.finished_tokens = 0  # tokens of finished sequences (their budget is settled)
        self.start = time.perf_counter()
        self.last_line = self.start
        self._bar = _RichBar(label, sequences * max_new_tokens) if self.live else None

    def tokens(self, count: int) -> None:
        self.new_tokens += count
        self._maybe_report()

    def sequence_done(self, length: int) -> None:
        self.done += 1
        self.finished_tokens += length
        self._maybe_report()

    @property
    def budget_done(self) -> int:
        """Finished sequences count their whole budget; running ones their tokens so far."""
        return self.done * self.budget_each + (self.new_tokens - self.finished_tokens)

    def line(self) -> str:
        seconds = time.perf_counter() - self.start
        rate = self.new_tokens / max(seconds, 1e-9)
        remaining = self.total * self.budget_each - self.budget_done
        eta = seconds * remaining / self.budget_done if self.budget_done else float("nan")
        return (
            f"{self.label}: {self.done}/{self.total} sequences, {self.new_tokens:,} tokens, "
            f"{rate:.1f} tok/s, ETA {_duration(eta)}"
        )

    def _maybe_report(self) -> None:
        if self._bar:
            self._bar.update(self.budget_done, self.new_tokens / max(time.perf_counter() - self.start, 1e-9))
            return
        now = time.perf_counter()
        if now - self.last_line >= self.interval:
            self.last_line = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar:
            self._bar.close()
        else:
            seconds = time.perf_counter() - self.start
            print(
                f"{self.label}: done, {self.done}/{self.total} sequences, {self.new_tokens:,} tokens in "
                f"{_duration(seconds)} ({self.new_tokens / max(seconds, 1e-9):.1f} tok/s)",
                file=self.stream, flush=True,
            )  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _RichBar:
    """A rich bar over the token budget with the rate; finished rows settle their whole budget."""

    def __init__(self, label: str, total: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(label), BarColumn(), TextColumn("{task.fields[rate]} tok/s"), TimeRemainingColumn(),
            transient=False,
        )  # fmt: skip
        self.task = self.progress.add_task(label, total=total, rate="-")
        self.progress.start()

    def update(self, completed: int, rate: float) -> None:
        self.progress.update(self.task, completed=completed, rate=f"{rate:.1f}")

    def close(self) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[0].total)
        self.progress.stop()
