"""`unirl train grpo` and `unirl train sft`: post-training recipes (configs/grpo/, configs/sft/)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from unirl_kit.cli.common import CONFIG_OPTION, OVERRIDES_ARG, resolve, user_errors
from unirl_kit.cli.options import BACKBONE_OPTION, MODEL_OPTION

app = typer.Typer(help="Post-train a backbone: UniRL's GRPO and SFT.", no_args_is_help=True)
RESUME = typer.Option(False, "--resume", help="continue from the last checkpoint in run.out, exactly")


@app.command("grpo")
def grpo(config: Path | None = CONFIG_OPTION, resume: bool = RESUME, backbone: str | None = BACKBONE_OPTION,
         model: str | None = MODEL_OPTION, overrides: list[str] | None = OVERRIDES_ARG) -> None:
    """GRPO on generated images (target gen), on answers (und), or both (joint).

    Settings in overrides: prompts_per_step=4 group_size=4 beta=0.0 loss_type=grpo target=gen
    rewards=[self-qa,geneval:0.5] optim.lr=1e-5 lora.enabled=true run.steps=100 run.out=DIR ...
    Under torchrun / accelerate launch, each rank takes prompts_per_step / N whole groups.
    """
    _train("grpo", config, resume, {"backbone.name": backbone, "backbone.model": model}, overrides)


@app.command("sft")
def sft(config: Path | None = CONFIG_OPTION, resume: bool = RESUME, backbone: str | None = BACKBONE_OPTION,
        model: str | None = MODEL_OPTION, overrides: list[str] | None = OVERRIDES_ARG) -> None:
    """UniRL SFT on the model's own images: mode und, e2e (straight-through Gumbel), gen-rs (online
    self-RAFT), distill (offline self-RAFT over a judged samples folder) or dpo (its best/worst pairs).

    Settings in overrides: mode=und prompts_per_step=4 group_size=4 threshold=1.0 keep_top=1 (gen-rs,
    distill) gumbel_tau=1.0 (e2e) samples=DIR (distill, dpo) dpo_beta=0.1 rewards=[self-qa] optim.lr=1e-5
    lora.enabled=true run.steps=100 run.out=DIR ...
    """
    _train("sft", config, resume, {"backbone.name": backbone, "backbone.model": model}, overrides)


@user_errors
def _train(recipe: str, config, resume, shortcuts, overrides) -> None:
    """Either recipe, imported here (torch loads only when a command runs)."""
    from unirl_kit.training.config import GRPOConfig, SFTConfig
    from unirl_kit.training.grpo import run_grpo
    from unirl_kit.training.sft import run_sft

    cls, run = (GRPOConfig, run_grpo) if recipe == "grpo" else (SFTConfig, run_sft)
    summary = run(resolve(cls, config, shortcuts, overrides or []), resume=resume)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "last"}))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="train")
