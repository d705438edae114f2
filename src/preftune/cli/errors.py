"""How `preftune` parses and fails: click's own usage errors (unknown flag, missing value, number
that is not one) end like every other user error, as one line `error: --flag: reason` with exit
code 2, not as typer's multi-line usage box; and a yes/no setting also takes a value (`--lora yes`).
"""

from __future__ import annotations

import sys

import typer
import typer.core

# typer 0.29 carries its own copy of click; its errors are these classes, not the click package's.
from typer._click import exceptions as click_errors

# Yes/no settings of each config command (`--lora`), filled by `add_config_command`.
BOOL_FLAGS: dict[str, set[str]] = {}


class OneLineErrors(typer.core.TyperGroup):
    """Click's usage errors (unknown flag, missing value, bad choice) end like every other user
    error: one line, `error: --flag: reason`, exit code 2, instead of a multi-line usage box.
    Also lets a yes/no flag take a value (`--lora yes`, `--lora=false`) as its help says."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        try:
            args = _bool_flag_values(args)
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as err:  # `preftune` alone: the help, as before
            if not standalone_mode:
                raise
            err.show()
            sys.exit(err.exit_code)
        except click_errors.ClickException as err:
            if not standalone_mode:
                raise
            typer.echo(f"error: {_one_line(err)}", err=True)
            sys.exit(2)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("aborted", err=True)
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _one_line(err: click_errors.ClickException) -> str:
    """`--flag: reason` from any click error, without the usage box."""
    ctx = getattr(err, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    if isinstance(err, click_errors.NoSuchOption):
        close = f"; did you mean {', '.join(err.possibilities)}?" if err.possibilities else ""
        return f"{err.option_name}: no such option{close}{hint}"
    if isinstance(err, click_errors.BadOptionUsage):
        return f"{err.option_name}: {err.message.replace(f'Option {err.option_name!r} requires', 'requires')}"
    param = getattr(err, "param", None)
    if param is not None and getattr(param, "opts", None):
        flag = max(param.opts, key=len) if param.param_type_name == "option" else param.name.upper()
        if isinstance(err, click_errors.MissingParameter):
            return f"{flag}: required{hint}"
        return f"{flag}: {err.message}"
    return f"{err.format_message()}{hint}"


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _bool_flag_values(args: list[str]) -> list[str]:
    """`--lora yes` -> `--lora`, `--lora=no` -> `--no-lora`; a word that is not yes/no is an error."""
    command = next((a for a in args if not a.startswith("-")), None)
    flags = BOOL_FLAGS.get(command or "", set())
    rewritten: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        name, has_value, value = arg.partition("=")
        if name in flags and (has_value or (index + 1 < len(args) and not args[index + 1].startswith("-"))):
            if not has_value:
                value = args[index + 1]
                index += 1
            if value.lower() not in _TRUE + _FALSE:
                raise click_errors.BadOptionUsage(name, f"must be yes or no (or give {name} / --no-{name[2:]} alone), got {value!r}")
            arg = name if value.lower() in _TRUE else f"--no-{name[2:]}"
        rewritten.append(arg)
        index += 1
    return rewritten


