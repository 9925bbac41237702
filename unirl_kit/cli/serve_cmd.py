"""`unirl serve reward`: one reward behind HTTP, for trainers in another environment or machine."""

from __future__ import annotations

from typing import Any

import typer

from unirl_kit.cli.common import user_errors

app = typer.Typer(help="Serve a reward over HTTP (for the `remote` reward).", no_args_is_help=True)

_OPTIONS_HELP = "Reward options as KEY=VALUE or reward_options.KEY=VALUE; backbone ones as backbone_options.KEY=VALUE."


@app.command("reward")
def reward(
    reward: str = typer.Option(..., "--reward", help="reward plugin to serve; see `unirl plugins`"),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback is reachable "
                                               "by others and there is no authentication"),
    port: int = typer.Option(8000, help="port to listen on"),
    backbone: str | None = typer.Option(None, help="backbone for rewards that need one (e.g. self-qa)"),
    model: str | None = typer.Option(None, help="the backbone's model folder or hub id (default: its own)"),
    device: str = typer.Option("auto", help="backbone device: auto, cpu, cuda, cuda:1, ..."),
    options: list[str] | None = typer.Argument(None, help=_OPTIONS_HELP, show_default=False),
) -> None:
    """Score batches sent by `--reward remote` (remote.url=http://HOST:PORT) until Ctrl-C.

    POST /score scores a batch, GET /health names the reward. Examples:
    `unirl serve reward --reward geneval detector=mmdet`, or with a backbone:
    `unirl serve reward --reward self-qa --backbone tiny-shapes --port 8001`.
    """
    _serve_reward(reward, host, port, backbone, model, device, options)


def split_options(items: list[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`key=value` items -> (reward options, backbone options); values stay raw strings until the
    plugin's own annotations type them."""
    from unirl_kit.config import parse_overrides

    parsed = parse_overrides(items)
    backbone_options = parsed.pop("backbone_options", {})
    reward_options = parsed.pop("reward_options", {})
    if not isinstance(backbone_options, dict) or not isinstance(reward_options, dict):
        from unirl_kit.types import InputError

        raise InputError("backbone_options / reward_options: give keys, as backbone_options.KEY=VALUE")
    return {**parsed, **reward_options}, backbone_options


@user_errors
def _serve_reward(reward: str, host: str, port: int, backbone: str | None, model: str | None, device: str,
                  options: list[str] | None) -> None:
    from unirl_kit.config import Range, check_value
    from unirl_kit.registry import registry
    from unirl_kit.rewards.server import serve_reward

    check_value("--port", port, Range(0, 65535, why="0 = any free port"))
    reward_options, backbone_options = split_options(options)
    registry("rewards").get(reward)  # an unknown name fails before any model loads
    model_obj = None
    if backbone is not None:
        from unirl_kit.generation.run import GenerateConfig, build_backbone

        model_obj = build_backbone(GenerateConfig(backbone=backbone, model=model, device=device,
                                                  backbone_options=backbone_options))
    elif model is not None or backbone_options:
        from unirl_kit.types import InputError

        raise InputError("--model and backbone_options need --backbone NAME")
    serve_reward(reward, reward_options, host=host, port=port, backbone=model_obj)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="serve")
