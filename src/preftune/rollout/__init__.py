"""Sampling completions: one engine under every command that generates (see engine.py)."""

from .engine import BACKENDS, PRECISIONS, RolloutEngine, RolloutResult, choose_precision
from .progress import RolloutProgress
from .sampling import SamplingParams, sample_next

__all__ = [
    "BACKENDS", "PRECISIONS", "RolloutEngine", "RolloutProgress", "RolloutResult", "SamplingParams",
    "choose_precision", "sample_next",
]  # fmt: skip
