"""What every `preftune` command shares: the app, one-line user errors, and config commands
generated from a config dataclass."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from functools import wraps
from pathlib import Path

import typer

from .. import __version__
from ..data.schema import DataError
from .errors import BOOL_FLAGS, OneLineErrors

app = typer.Typer(
    name="preftune",
    help="Preference tuning for language models: label, train reward models, PPO, DPO, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
    # Plain help: rich markup would swallow "[default: 0.1]", "[required]" and "str | [messages]".
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Inspect and convert preference data.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command):
    """Turn the errors a user can cause into one line and exit code 2."""

    @wraps(command)
    def run(*args, **kwargs):
        from ..models.load import ModelLoadError
        from ..train.common import TrainingDiverged

        try:
            return command(*args, **kwargs)
        except (DataError, ModelLoadError) as err:
            fail(str(err))
        except TrainingDiverged as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as err:
            # Under torchrun: a collective that failed because another worker died or hung.
            explained = _distributed_failure(err)
            if explained is None:
                raise
            typer.echo(f"error: {explained}", err=True)
            raise typer.Exit(1) from None

    return run


def _distributed_failure(err: BaseException) -> str | None:
    if "torch.distributed" not in sys.modules:  # no training ran: nothing distributed to explain
        return None
    from ..train.distributed import describe_failure

    return describe_failure(err)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"preftune {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Preference tuning for language models."""


def _metavar(annotation, check=None) -> str:
    """How --help names a flag's value; the value itself is checked by config.resolve_config."""
    if check is not None and check.choices:
        return "|".join(check.choices)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args else annotation
    if typing.get_origin(base) is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(base))
    return {int: "INT", float: "FLOAT"}.get(base, "LIST" if typing.get_origin(base) is list else "TEXT")


def add_config_command(
    name: str, config_class: type, run: typing.Callable, summary: str, short_flags: dict[str, str] | None = None
) -> None:
    """Register `preftune NAME` with one flag per config field, plus --config FILE.yaml.

    The flags are generated from the dataclass, so a setting's name, type and help live in one
    place (the config class) and `--config` files use exactly the same names. `short_flags` adds
    a one-letter form to a field's flag, e.g. {"out": "-o"}.
    """
    short_flags = short_flags or {}
    unknown = set(short_flags) - {f.name for f in dataclasses.fields(config_class)}
    if unknown:
        raise ValueError(f"short_flags name no field of {config_class.__name__}: {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(config_class)
    params = [
        inspect.Parameter(
            "config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--config", help="YAML file of settings; flags override it."),
        )
    ]  # fmt: skip
    BOOL_FLAGS[name] = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(config_class) if hints[f.name] is bool}
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        decl = f"{flag}/--no-{field.name.replace('_', '-')}" if hints[field.name] is bool else flag
        decls = (decl, short_flags[field.name]) if field.name in short_flags else (decl,)
        help_text = field.metadata.get("help", "")
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            help_text += " [required]"
        elif field.default not in (dataclasses.MISSING, None, ""):
            help_text += f" [default: {field.default}]"
        params.append(
            inspect.Parameter(
                # Values arrive as text and are checked by resolve_config, so a bad value gets the
                # same one-line "--flag: reason" error from a flag as from a config file.
                field.name, inspect.Parameter.KEYWORD_ONLY,
                annotation=bool | None if hints[field.name] is bool else str | None,
                default=typer.Option(None, *decls, help=help_text, show_default=False, metavar=_metavar(hints[field.name], field.metadata.get("check"))),
            )
        )  # fmt: skip

    def command(config_file: Path | None = None, **flags):
        from ..config import resolve_config

        result = run(resolve_config(config_class, config_file, flags))
        if "torch.distributed" in sys.modules:  # under torchrun: leave the process group cleanly
            from ..train.distributed import shutdown

            shutdown()
        return result

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = summary
    app.command(name, help=summary)(user_errors(command))
