"""An endless, seekable stream of rendered shapes scenes for pre-training.

Batch `step` is drawn from its own generator (seed, step), so a resumed run sees exactly the
batches a straight run would have seen, with no data-loader state to save.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.prompts.qa import question_answer
from unirl_kit.types import GENEVAL_TAGS, PromptSpec
from unirl_kit.worlds.shapes.render import PlacedObject, render_scene


def to_pixels(images: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 arrays -> Bx3xHxW float in [-1, 1] (the range Janus's VQ works in)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Bx3xHxW in [-1, 1] -> BxHxWx3 uint8."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def scene_batch(seed: int, step: int, batch_size: int, size: int, align: int = 1,
                tags: Sequence[str] = GENEVAL_TAGS) -> tuple[torch.Tensor, list[PromptSpec]]:
    """Batch number `step`: prompts cycle over `tags` (the six), each with its question and answer."""
    pixels, specs, _ = scene_batch_with_objects(seed, step, batch_size, size, align, tags)
    return pixels, specs


def scene_batch_with_objects(seed: int, step: int, batch_size: int, size: int, align: int = 1,
                             tags: Sequence[str] = GENEVAL_TAGS,
                             ) -> tuple[torch.Tensor, list[PromptSpec], list[list[PlacedObject]]]:
    """`scene_batch` plus the objects each image shows (the labels of the vision stage)."""
    rng = np.random.default_rng([seed, step])
    world = get_world("shapes")
    images, specs, objects = [], [], []
    for i in range(batch_size):
        spec = sample_prompt(tags[(step * batch_size + i) % len(tags)], world, rng)
        q, a = question_answer(spec)
        spec = dataclasses.replace(spec, question=q, answer=a)
        image, placed = render_scene(spec, rng, size, align=align)
        images.append(np.asarray(image))
        specs.append(spec)
        objects.append(placed)
    return to_pixels(images), specs, objects
