"""The `unirl` command: a thin Typer layer. Heavy modules (torch, transformers) load inside commands."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from unirl_kit.cli import (
    convert_cmd,
    eval_cmd,
    generate_cmd,
    loop_cmd,
    plugins_cmd,
    pretrain_cmd,
    prompts_cmd,
    score_cmd,
    serve_cmd,
    train_cmd,
)
from unirl_kit.cli.common import fail

# click's UsageError as typer raises it (typer >= 0.20 vendors click, older versions use click itself).
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class OneLineUsageErrors(TyperGroup):
    """The root command: a usage error of any command (an unknown option, `--n abc`, a missing argument)
    is one `error:` line with exit code 2 like every other bad input, not click's usage box."""

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _USAGE_ERROR as exc:
            _one_line(exc, info_name or "unirl")

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _USAGE_ERROR as exc:
            _one_line(exc, ctx.command_path)


def _one_line(exc: Exception, fallback: str) -> NoReturn:
    """`error: unirl CMD: <click's message> (see unirl CMD --help)`; asking for help stays help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        raise exc
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else fallback
    fail(f"{path}: {exc.format_message()} (see {path} --help)")


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="unirl",
    help="UniRL toolkit: self-improvement of unified multimodal models (generate, score, train, evaluate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
prompts_cmd.register(app)
plugins_cmd.register(app)
pretrain_cmd.register(app)
loop_cmd.register(app)
generate_cmd.register(app)
score_cmd.register(app)
serve_cmd.register(app)
train_cmd.register(app)
loop_cmd.register(app)
app.add_typer(eval_cmd.app, name="eval")
convert_cmd.register(app)


def main() -> None:
    from unirl_kit.progress import setup_logging

    setup_logging()  # progress lines where stderr is no terminal (unirl_kit/progress.py)
    app()
