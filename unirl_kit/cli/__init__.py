"""The `unirl` command: a thin Typer layer. Heavy modules (torch, transformers) load inside commands."""

from __future__ import annotations

import typer

from unirl_kit.cli import eval_cmd, generate_cmd, plugins_cmd, pretrain_cmd, prompts_cmd

app = typer.Typer(
    name="unirl",
    help="UniRL toolkit: prompts, rendering, GenEval and (soon) self-improvement of unified models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
prompts_cmd.register(app)
plugins_cmd.register(app)
pretrain_cmd.register(app)
generate_cmd.register(app)
app.add_typer(eval_cmd.app, name="eval")


def main() -> None:
    app()
