"""The `unirl` command: a thin Typer layer. Heavy modules (torch, transformers) load inside commands."""

from __future__ import annotations

import typer

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

app = typer.Typer(
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
    app()
