"""`python:module:function` rewards: the user's own scoring code, imported by name.

The function takes `(prompt, response)` and returns a number, like every judge: `prompt` is the
last user message as a string (what `preftune ppo` and `preftune grpo` pass plain callables) and
`response` the completion's text. The current folder is importable, so a `my_rewards.py` beside
the command works as `--reward python:my_rewards:score`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable

from ..data.schema import DataError

PYTHON_PREFIX = "python:"


class PythonRewardError(DataError):
    """A python: spec that does not give a usable function, or a call that did not return a number:
    one line, `SPEC: reason`, naming the module and the function."""

    def __init__(self, spec: str, reason: str):
        super().__init__(spec, 0, reason)


def load_python_reward(spec: str) -> Callable[[str, str], float]:
    """The function `spec` = "python:MODULE:FUNCTION" names, checked to take (prompt, response);
    its results are checked at each call to be finite numbers."""
    target = spec[len(PYTHON_PREFIX) :] if spec.startswith(PYTHON_PREFIX) else spec
    module_name, _, function_name = target.rpartition(":")
    if not module_name or not function_name:
        raise PythonRewardError(spec, "use python:MODULE:FUNCTION, e.g. python:my_rewards:score")
    if os.getcwd() not in sys.path:  # the user's file beside the command, as `python -m` would see it
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure of user code is reported in one line
        raise PythonRewardError(spec, f"cannot import module {module_name!r}: {type(err).__name__}: {err}") from None
    function = getattr(module, function_name, None)
    if function is None:
        raise PythonRewardError(spec, f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no {function_name!r}")
    if not callable(function):
        raise PythonRewardError(spec, f"{module_name}.{function_name} is a {type(function).__name__}, not a function")
    try:
        inspect.signature(function).bind("prompt", "response")
    except TypeError:
        raise PythonRewardError(
            spec, f"{module_name}.{function_name}{inspect.signature(function)} must accept (prompt, response)"
        ) from None
    except ValueError:  # builtins without a signature: trust them, the call check below still runs
        pass

    def reward(prompt, response: str) -> float:
        if not isinstance(prompt, str):  # a conversation: the last user turn, as the docstring promises
            prompt = next((m.content for m in reversed(prompt) if m.role == "user"), "")
        value = function(prompt, response)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise PythonRewardError(spec, f"{module_name}.{function_name} returned {value!r}, not a number") from None
        if not math.isfinite(number):
            raise PythonRewardError(spec, f"{module_name}.{function_name} returned {number}, not a finite number")
        return number

    return reward
