"""`unirl generate`: images (+ token ids and log-probs) from a backbone, in GenEval's folder layout."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from unirl_kit.cli.common import CONFIG_OPTION, OVERRIDES_ARG, resolve, user_errors
from unirl_kit.cli.options import BACKBONE_OPTION, MODEL_OPTION


def generate(
    backbone: str | None = BACKBONE_OPTION,
    model: str | None = MODEL_OPTION,
    prompts: Path | None = typer.Option(None, help="GenEval metadata JSONL, `unirl prompts` output, or text (one a line)"),
    group_size: int | None = typer.Option(None, help="images per prompt (default: 4)"),
    out: Path | None = typer.Option(None, help="output folder (GenEval layout + tokens.safetensors + grid.png)"),
    batch_size: int | None = typer.Option(None, help="images per sampler call (default: 16)"),
    seed: int | None = typer.Option(None, help="base seed; image k of prompt i uses a hash of (seed, i, k) (default: 0)"),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Sample images for every prompt; resumable; rank-sliced under torchrun.

    Sampling and loading settings go in overrides: sampling.cfg_scale=null (the weights' own; Janus 5)
    sampling.temperature=1 sampling.top_k=null sampling.top_p=null backbone.device=auto backbone.dtype=auto
    backbone.options.chat_template=true ...
    """
    _generate(backbone, model, prompts, group_size, out, batch_size, seed, config, overrides)


@user_errors
def _generate(backbone, model, prompts, group_size, out, batch_size, seed, config, overrides) -> None:
    from unirl_kit.generation.run import GenerateConfig, run_generate

    cfg = resolve(GenerateConfig, config, {
        "backbone.name": backbone, "backbone.model": model, "prompts": prompts and str(prompts),
        "group_size": group_size, "out": out and str(out), "batch_size": batch_size, "seed": seed}, overrides or [])
    report = run_generate(cfg)
    typer.echo(json.dumps(report))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
