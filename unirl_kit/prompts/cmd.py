"""`unirl prompts`: the config and the job behind the command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unirl_kit.config import write_run_info
from unirl_kit.prompts.generate import generate_prompts
from unirl_kit.prompts.schema import read_prompts, write_prompts
from unirl_kit.types import InputError, PromptSpec


@dataclass
class PromptsConfig:
    world: str = "shapes"
    n: int = 120
    seed: int = 0
    exclude: str | None = None
    out: str = ""


def run_prompts(cfg: PromptsConfig) -> list[PromptSpec]:
    if not cfg.out:
        raise InputError("prompts needs --out FILE.jsonl")
    if cfg.n < 1:
        raise InputError(f"--n must be >= 1, got {cfg.n}")
    excluded: dict[str, str] = {}
    if cfg.exclude:
        excluded = {spec.prompt: spec.tag for spec in read_prompts(Path(cfg.exclude))}
    specs = generate_prompts(cfg.world, cfg.n, cfg.seed, excluded)
    out = Path(cfg.out)
    write_prompts(specs, out)
    write_run_info(out.parent, cfg, "prompts", prefix=f"{out.stem}.")
    return specs
