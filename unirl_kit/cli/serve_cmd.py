"""`unirl serve reward`: one reward behind HTTP, for trainers in another environment or machine."""

from __future__ import annotations

from typing import Any

import typer

from unirl_kit.cli.common import user_errors
from unirl_kit.cli.options import BACKBONE_OPTION, MODEL_OPTION

app = typer.Typer(help="Serve a reward over HTTP (for the `remote` reward).", no_args_is_help=True)

_OPTIONS_HELP = ("Reward options as KEY=VALUE or reward_options.KEY=VALUE; the backbone's settings as "
                 "backbone.KEY=VALUE (backbone.options.KEY=VALUE, backbone.dtype=bf16, ...).")


@app.command("reward")
def reward(
    reward: str = typer.Option(..., "--reward", help="reward plugin to serve; see `unirl plugins`"),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback is reachable "
                                               "by others and there is no authentication"),
    port: int = typer.Option(8000, help="port to listen on"),
    backbone: str | None = BACKBONE_OPTION,  # for rewards that need one (e.g. self-qa)
    model: str | None = MODEL_OPTION,
    device: str | None = typer.Option(None, help="backbone.device: auto, cpu, cuda, cuda:1, ... (default: auto)"),
    options: list[str] | None = typer.Argument(None, help=_OPTIONS_HELP, show_default=False),
) -> None:
    """Score batches sent by `--reward remote` (remote.url=http://HOST:PORT) until Ctrl-C.

    POST /score scores a batch, GET /health names the reward. Examples:
    `unirl serve reward --reward geneval detector=mmdet`, or with a backbone:
    `unirl serve reward --reward self-qa --backbone tiny-shapes --port 8001`.
    """
    _serve_reward(reward, host, port, backbone, model, device, options)


def split_options(items: list[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`key=value` items -> (reward options, backbone settings: the `backbone.*` keys, in the shape every
    stage uses); values stay raw strings until the plugin's own annotations type them."""
    from unirl_kit.config import parse_overrides, translate_moved

    moved = {"backbone_options": "backbone.options"}  # the spelling before issue 19
    parsed = translate_moved(moved, parse_overrides(items), "serve reward")
    settings = parsed.pop("backbone", {})
    reward_options = parsed.pop("reward_options", {})
    if not isinstance(settings, dict) or not isinstance(reward_options, dict):
        from unirl_kit.types import InputError

        raise InputError("backbone / reward_options: give keys, as backbone.options.KEY=VALUE or "
                         "reward_options.KEY=VALUE")
    return {**parsed, **reward_options}, settings


@user_errors
def _serve_reward(reward: str, host: str, port: int, backbone: str | None, model: str | None, device: str | None,
                  options: list[str] | None) -> None:
    from unirl_kit.config import Range, check_value, deep_merge
    from unirl_kit.registry import registry
    from unirl_kit.rewards.server import serve_reward

    check_value("--port", port, Range(0, 65535, why="0 = any free port"))
    reward_options, settings = split_options(options)
    factory = registry("rewards").get(reward)  # an unknown name fails before any model loads
    shortcuts = {k: v for k, v in {"name": backbone, "model": model, "device": device}.items() if v is not None}
    settings = deep_merge(shortcuts, settings)  # as everywhere: options < key=value overrides
    model_obj = None
    if "name" in settings or getattr(factory, "needs_backbone", False):  # as `score`: tiny-shapes by default
        from unirl_kit.backbones.config import (
            BackboneConfig,
            build_backbone,
            check_inference,
            inference_backbone,
        )
        from unirl_kit.config import from_dict, to_dict

        cfg = from_dict(BackboneConfig, {**to_dict(inference_backbone()), **settings}, "backbone")
        check_inference(cfg, "serve reward")
        model_obj = build_backbone(cfg)
    elif settings:
        from unirl_kit.types import InputError

        raise InputError("--model, --device and backbone.* settings need --backbone NAME")
    serve_reward(reward, reward_options, host=host, port=port, backbone=model_obj)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="serve")
