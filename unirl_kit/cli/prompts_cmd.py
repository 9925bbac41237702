"""`unirl prompts` and `unirl render`: prompt sets and their scenes in the shapes world."""

from __future__ import annotations

from pathlib import Path

import typer

from unirl_kit.cli.common import CONFIG_OPTION, OVERRIDES_ARG, resolve, split_positional, user_errors


def prompts(
    world: str | None = typer.Option(None, help="shapes or coco [default: shapes]"),
    n: int | None = typer.Option(None, "--n", help="number of prompts [default: 120]"),
    seed: int | None = typer.Option(None, help="sampling seed [default: 0]"),
    exclude: Path | None = typer.Option(None, help="prompts file whose prompts must not appear"),
    shares: str | None = typer.Option(None, help="a training set's share per tag: 'equal' or TAG=W,...; tags "
                                                  "whose prompts --exclude holds all reuse them (marked held_out: false)"),
    question_style: str | None = typer.Option(None, help="unirl (the authors' wording: no question names an "
                                                         "object) or named [default: named]"),
    out: Path | None = typer.Option(None, help="output prompts JSONL"),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Write GenEval-style metadata lines (all six tags) with UniRL questions and answers."""
    _prompts(world, n, seed, exclude, shares, question_style, out, config, overrides)


@user_errors
def _prompts(world, n, seed, exclude, shares, question_style, out, config, overrides) -> None:
    from unirl_kit.prompts.cmd import PromptsConfig, parse_shares, run_prompts

    cfg = resolve(PromptsConfig, config, dict(world=world, n=n, seed=seed, exclude=exclude and str(exclude),
                                               shares=shares and parse_shares(shares), question_style=question_style,
                                               out=out and str(out)),
                  overrides or [])
    specs = run_prompts(cfg)
    typer.echo(f"wrote {len(specs)} prompts to {cfg.out}")


def render(
    prompts_file: str | None = typer.Argument(None, metavar="PROMPTS.jsonl", show_default=False),
    images_per_prompt: int | None = typer.Option(None, help="images per prompt [default: 4]"),
    out: Path | None = typer.Option(None, help="output folder (GenEval layout)"),
    seed: int | None = typer.Option(None, help="placement seed [default: 0]"),
    size: int | None = typer.Option(None, help="image side in pixels [default: 64]"),
    error: str | None = typer.Option(None, help="controlled error where it applies: count, color, relation, missing"),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Draw each prompt's scene in the shapes world, in GenEval's folder layout (resumable)."""
    _render(prompts_file, images_per_prompt, out, seed, size, error, config, overrides)


@user_errors
def _render(prompts_file, images_per_prompt, out, seed, size, error, config, overrides) -> None:
    from unirl_kit.worlds.shapes.dataset import RenderConfig, run_render

    prompts_file, overrides = split_positional(prompts_file, overrides)
    cfg = resolve(RenderConfig, config, dict(prompts=prompts_file, images_per_prompt=images_per_prompt,
                                             out=out and str(out), seed=seed, size=size, error=error), overrides)
    drawn = run_render(cfg)
    typer.echo(f"drew {drawn} images into {cfg.out}")


def register(app: typer.Typer) -> None:
    app.command("prompts")(prompts)
    app.command("render")(render)
