"""Evaluation: win rate against a reference, KL estimates, length stats, reward-hacking detectors.

`run.py` is `preftune eval`; `hacking.py` checks a run folder (`check_run`, `format_warnings`,
`print_warnings`).
"""

from preftune.eval.hacking import HackingWarning, check_run, format_warnings, print_warnings

__all__ = ["HackingWarning", "check_run", "format_warnings", "print_warnings"]
