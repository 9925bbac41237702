"""What every command shares: config resolution and one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

T = TypeVar("T")

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
OVERRIDES_ARG = typer.Argument(None, help="Overrides like key=value or a.b=value.", show_default=False)


def fail(message: str, code: int = 2) -> None:
    message = " ".join(str(message).split())  # one line, whatever the exception's text holds
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad input into `error: <one line>` and exit code 2; real bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from unirl_kit.registry import UnknownPluginError
        from unirl_kit.rewards.base import RewardError
        from unirl_kit.types import InputError, TrainingError

        try:
            return fn(*args, **kwargs)
        except (InputError, UnknownPluginError, RewardError, TrainingError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.secho("interrupted: finished work is saved; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def split_positional(value: str | None, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """A lone `key=value` given where a path was expected is an override, not a path."""
    overrides = list(overrides or [])
    if value is not None and "=" in value and not Path(value).exists():
        return None, [value, *overrides]
    return value, overrides


def resolve(cls: type[T], config: Path | None, cli: dict[str, Any], overrides: list[str]) -> T:
    from unirl_kit.config import load_config

    return load_config(cls, config, cli, overrides)
