"""`unirl render`: draw a prompt set into GenEval's layout, with ground truth beside each image."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unirl_kit.config import check_ranges, write_run_info
from unirl_kit.eval.geneval.layout import image_rel, save_png_atomic, write_prompt_folder
from unirl_kit.locking import holds_output_locks, lock_output
from unirl_kit.prompts.schema import read_prompts
from unirl_kit.types import InputError, PromptSpec
from unirl_kit.worlds.shapes.render import RENDER_ERRORS, check_in_world, error_applies, render_scene
from unirl_kit.worlds.shapes.vocab import IMAGE_SIZE


@dataclass
class RenderConfig:
    prompts: str = ""
    out: str = ""
    images_per_prompt: int = 4
    seed: int = 0
    size: int = IMAGE_SIZE
    error: str | None = None  # draw this controlled error wherever it applies (tests, rewards)


def image_rng(seed: int, prompt_index: int, image_index: int) -> np.random.Generator:
    """One generator per image: any image can be redrawn alone, identically (resume, sharding)."""
    return np.random.default_rng([seed, prompt_index, image_index])


def render_prompt_set(specs: list[PromptSpec], out: Path, images_per_prompt: int, seed: int = 0,
                      size: int = IMAGE_SIZE, error: str | None = None) -> int:
    """Render every missing image; returns how many were drawn now."""
    if images_per_prompt < 1:
        raise InputError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    for i, spec in enumerate(specs):
        check_in_world(spec, f"prompt {i} ({spec.prompt!r})")
    drawn = 0
    for pi, spec in enumerate(specs):
        write_prompt_folder(out, pi, spec.to_json())
        err = error if error is not None and error_applies(spec, error) else None
        for ii in range(images_per_prompt):
            path = Path(out) / image_rel(pi, ii)
            if path.exists():
                continue
            image, objects = render_scene(spec, image_rng(seed, pi, ii), size, err)
            truth = {"error": err, "objects": [
                {"class": o.cls, "color": o.color, "box": list(o.box)} for o in objects]}
            path.with_suffix(".truth.json").write_text(json.dumps(truth) + "\n")
            save_png_atomic(image, path)
            drawn += 1
    return drawn


@holds_output_locks
def run_render(cfg: RenderConfig) -> int:
    if not cfg.prompts or not cfg.out:
        raise InputError("render needs PROMPTS.jsonl and --out DIR")
    check_ranges(cfg)
    if cfg.error is not None and cfg.error not in RENDER_ERRORS:
        raise InputError(f"--error {cfg.error!r}: expected one of {', '.join(RENDER_ERRORS)}")
    specs = read_prompts(Path(cfg.prompts))
    if not specs:
        raise InputError(f"{cfg.prompts}: no prompts (the file is empty); give a `unirl prompts` JSONL")
    lock_output(Path(cfg.out))
    drawn = render_prompt_set(specs, Path(cfg.out), cfg.images_per_prompt, cfg.seed, cfg.size, cfg.error)
    write_run_info(Path(cfg.out), cfg, "render")
    return drawn
