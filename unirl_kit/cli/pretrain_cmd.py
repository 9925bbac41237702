"""`unirl pretrain`: the embedded default model's recipe (tokenizer, gate, vision tower, language model, export)."""

from __future__ import annotations

from pathlib import Path

import typer

from unirl_kit.cli.common import CONFIG_OPTION, OVERRIDES_ARG, resolve, user_errors


def pretrain(
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Pre-train tiny-shapes (configs/pretrain/tiny_shapes.yaml); rerun the same command to resume."""
    _pretrain(config, overrides)


@user_errors
def _pretrain(config, overrides) -> None:
    import json

    from unirl_kit.pretrain.recipe import PretrainConfig, run_pretrain

    cfg = resolve(PretrainConfig, config, {}, overrides or [])
    report = run_pretrain(cfg)
    typer.echo(json.dumps(report, indent=2))


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
