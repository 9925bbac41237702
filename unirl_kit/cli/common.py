"""What every command shares: config resolution and one-line errors instead of tracebacks."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

T = TypeVar("T")

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="YAML config file (see configs/).")
OVERRIDES_ARG = typer.Argument(None, help="Overrides like key=value or a.b=value.", show_default=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: <message on one line>` to stderr and exit with `code`."""
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
        except TimeoutError as exc:  # ranks that never met: the message says what to wait for or rerun
            fail(str(exc))
        except Exception as exc:
            if not disk_full(exc):
                raise  # a real bug: its traceback is what a report needs
            fail(f"the disk is full ({_where(exc)}); free some space and rerun the same command: it resumes "
                 "where this run stopped (finished work is saved)")
        except KeyboardInterrupt:
            typer.secho("interrupted: finished work is saved; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def disk_full(exc: BaseException) -> bool:
    """A write that failed for want of space (or quota): OSError ENOSPC/EDQUOT, or safetensors' own error,
    which carries only the OS error's text."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return type(exc).__name__ == "SafetensorError" and f"(os error {errno.ENOSPC})" in str(exc)


def _where(exc: BaseException) -> str:
    """The file a failed write names, when the error says."""
    name = getattr(exc, "filename", None)
    return f"writing {name}" if name else "No space left on device"


def split_positional(value: str | None, overrides: list[str] | None) -> tuple[str | None, list[str]]:
    """A lone `key=value` given where a path was expected is an override, not a path."""
    overrides = list(overrides or [])
    if value is not None and "=" in value and not Path(value).exists():
        return None, [value, *overrides]
    return value, overrides


def resolve(cls: type[T], config: Path | None, cli: dict[str, Any], overrides: list[str]) -> T:
    """The command's config; a `--config` that is no readable UTF-8 file, or YAML nested past Python's
    recursion limit (PyYAML composes recursively), is one line naming the file."""
    from unirl_kit.config import load_config
    from unirl_kit.jsonl import read_text
    from unirl_kit.types import InputError

    if config is not None and Path(config).exists():  # a missing one: load_config says so
        read_text(config, f"--config {config}")
    try:
        return load_config(cls, config, cli, overrides)
    except RecursionError:
        raise InputError(f"{config or 'overrides'}: nested too deeply to be a config") from None
