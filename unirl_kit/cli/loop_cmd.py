"""`unirl loop`: the toolkit's main job (generate -> score -> train -> evaluate, K rounds, report)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from unirl_kit.cli.common import CONFIG_OPTION, OVERRIDES_ARG, resolve, user_errors
from unirl_kit.cli.options import BACKBONE_OPTION, MODEL_OPTION


def loop(config: Path | None = CONFIG_OPTION, backbone: str | None = BACKBONE_OPTION, model: str | None = MODEL_OPTION,
         overrides: list[str] | None = OVERRIDES_ARG) -> None:
    """Self-improvement rounds; with no arguments, the embedded default (tiny-shapes, self-qa, one
    short GRPO round, ~10 minutes on 2 CPU cores). Rerun the same command to resume.

    Settings in overrides: rounds=2 train=grpo|sft|both grpo_config=configs/grpo/tiny_shapes.yaml
    grpo_overrides='[run.steps=30]' backbone.name=janus backbone.model=DIR out=runs/loop ...
    """
    _loop(config, {"backbone.name": backbone, "backbone.model": model}, overrides)


@user_errors
def _loop(config, shortcuts, overrides) -> None:
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.loop.report import print_report
    from unirl_kit.loop.run import run_loop

    cfg = resolve(LoopConfig, config, shortcuts, overrides or [])
    report = run_loop(cfg)
    print_report(report)
    typer.echo(json.dumps({"report": str(Path(cfg.out) / "report.md"), "seconds": report.get("seconds_this_run")}))


def register(app: typer.Typer) -> None:
    app.command("loop")(loop)
