"""The run folder: `config.yaml`, `metrics.jsonl`, `samples.jsonl`, `checkpoints/`, `report.html`.

Trainers write here and nothing else; the dashboard, reports and `eval/` read it back. Each line
of `metrics.jsonl` is one JSON object with `step` plus metric names from DESIGN.md section 4, and
is flushed as it is written, so a live reader never sees half a line.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .config import save_config
from .data.files import text_lines


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars to Python numbers; NaN/inf to None (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """Appends metrics and samples for one run; optional TensorBoard / W&B mirrors."""

    def __init__(self, out_dir: str | Path, config: Any = None, report_to: str = "none", enabled: bool = True):
        self.dir = Path(out_dir)
        self.enabled = enabled  # only rank 0 writes, under torchrun
        self.report_to = report_to
        self._tensorboard = None
        self._wandb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            save_config(config, self.dir / "config.yaml")
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("--report-to tensorboard needs the `tensorboard` package: pip install tensorboard") from err
            self._tensorboard = SummaryWriter(str(self.dir / "tensorboard"))
        elif report_to == "wandb":
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("--report-to wandb needs the `wandb` package: pip install wandb") from err
            self._wandb = wandb.init(dir=str(self.dir), config=vars(config) if config is not None else None)
        elif report_to != "none":
            raise ValueError(f"--report-to must be tensorboard, wandb or none, got {report_to!r}")

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": step, "time": round(time.time(), 3)} | {k: _plain(v) for k, v in metrics.items()}
        if not self.enabled:
            return row
        with self.metrics_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        for name, value in row.items():
            if name in ("step", "time") or not isinstance(value, int | float):
                continue
            if self._tensorboard is not None:
                self._tensorboard.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "time"}, step=step)
        return row

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """One line per sample: prompt, policy completion, reference completion, scores."""
        if not self.enabled:
            return
        with (self.dir / "samples.jsonl").open("a", encoding="utf-8") as out:
            for sample in samples:
                out.write(json.dumps({"step": step} | sample, ensure_ascii=False) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the history has no duplicates."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self.dir / name
            if not self.enabled or not path.exists():
                continue
            # text_lines splits at "\n" only: str.splitlines() would also cut a row at a U+2028 that
            # a logged completion holds (json.dumps(ensure_ascii=False) writes it raw).
            kept = [line for line in text_lines(path, str(path)) if json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file ([] when absent), stopping at a half-written last line: a run being
    written right now is read up to its last complete line."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in text_lines(path, str(path)):  # "\n" only, as in truncate_after
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                break
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows: `step`, `time` and metric names (DESIGN.md section 4)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def read_samples(run_dir: str | Path) -> list[dict[str, Any]]:
    """samples.jsonl rows: step, prompt, policy, reference, policy_score, reference_score."""
    return read_jsonl(Path(run_dir) / "samples.jsonl")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """config.yaml as a plain dict ({} when absent or unreadable: the run is still worth reading)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
