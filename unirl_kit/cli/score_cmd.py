"""`unirl score`: per-image rewards for a samples folder, with the spread GRPO would see."""

from __future__ import annotations

from pathlib import Path

import typer

from unirl_kit.cli.common import CONFIG_OPTION, OVERRIDES_ARG, resolve, split_positional, user_errors
from unirl_kit.cli.options import BACKBONE_OPTION, MODEL_OPTION


def score(
    samples_dir: str | None = typer.Argument(None, metavar="SAMPLES_DIR", show_default=False),
    reward: list[str] | None = typer.Option(
        None, "--reward", "-r", show_default=False,
        help="NAME, NAME:WEIGHT or module:function[:WEIGHT], repeatable (default: self-qa); see `unirl plugins`"),
    backbone: str | None = BACKBONE_OPTION,  # for rewards that need one
    model: str | None = MODEL_OPTION,
    out: Path | None = typer.Option(None, help="scores file (default: SAMPLES_DIR/scores.jsonl)"),
    batch_size: int | None = typer.Option(None, help="images per reward call (default: 32)"),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Score every image of a GenEval-layout folder with weighted rewards; resumable; rank-sharded.

    Reward options go in overrides: reward_options.NAME.KEY=VALUE; also backbone.device=auto
    backbone.dtype=auto backbone.options.KEY=VALUE progress=false ...
    """
    _score(samples_dir, reward, backbone, model, out, batch_size, config, overrides)


@user_errors
def _score(samples_dir, reward, backbone, model, out, batch_size, config, overrides) -> None:
    from unirl_kit.scoring.run import ScoreConfig, run_score, scores_path, summary_path
    from unirl_kit.scoring.summary import print_table

    samples_dir, overrides = split_positional(samples_dir, overrides)
    cfg = resolve(ScoreConfig, config, {
        "samples_dir": samples_dir, "rewards": list(reward) if reward else None, "backbone.name": backbone,
        "backbone.model": model, "out": out and str(out), "batch_size": batch_size}, overrides)
    summary = run_score(cfg)  # a reward's failure: one line (user_errors); the rows before it stay
    if summary:
        print_table(summary)
        path = scores_path(cfg)
        typer.echo(f"scores: {path}; summary: {summary_path(path)}")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
