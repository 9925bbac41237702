"""Drawing the scene a GenEval metadata line asks for, optionally with one controlled error.

Placement is random but valid (seeded): objects never touch (MIN_GAP), position prompts satisfy
exactly the asked relation under GenEval's own rule, so every clean render scores 1.0 with the
`shapes` detector; a controlled error makes the matching GenEval check fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from unirl_kit.eval.geneval.rules import relative_position
from unirl_kit.types import InputError, PromptSpec
from unirl_kit.worlds.shapes.geometry import place_mask
from unirl_kit.worlds.shapes.vocab import (
    BACKGROUND,
    COLORS,
    IMAGE_SIZE,
    MIN_GAP,
    PALETTE,
    SHAPES,
    SIZE_MULTI,
    SIZE_SINGLE,
)

ErrorKind = Literal["count", "color", "relation", "missing"]
ERRORS: tuple[str, ...] = ("count", "color", "relation", "missing")
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass
class PlacedObject:
    cls: str
    color: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive), the object's exact extent
    group: int  # index of the include entry it stands for (-1: added by an error)


def check_in_world(spec: PromptSpec, where: str = "prompt") -> None:
    for req in (*spec.include, *spec.exclude):
        if req.cls not in SHAPES:
            raise InputError(f"{where}: class {req.cls!r} is not in the shapes world (shapes: {', '.join(SHAPES)})")
        if req.color is not None and req.color not in PALETTE:
            raise InputError(f"{where}: colour {req.color!r} is not in the shapes world (colours: {', '.join(COLORS)})")


def _plan(spec: PromptSpec, rng: np.random.Generator, error: str | None) -> tuple[list[tuple[str, str, int]], dict]:
    """The objects to draw as (class, colour, group), and relation constraints per group."""
    objects: list[tuple[str, str, int]] = []
    relations: dict[int, tuple[str, int, bool]] = {}  # group -> (relation, ref group, wanted?)
    for gi, req in enumerate(spec.include):
        count = req.count
        color = req.color
        if error == "count" and gi == len(spec.include) - 1:
            count = req.count + 1 if req.count < 4 else req.count - 1
        if error == "missing" and gi == len(spec.include) - 1:
            count = 0
        if error == "color" and req.color is not None and gi == max(i for i, r in enumerate(spec.include) if r.color):
            color = str(rng.choice([c for c in COLORS if c != req.color]))
        for _ in range(count):
            objects.append((req.cls, color or str(rng.choice(COLORS)), gi))
        if req.position is not None:
            relations[gi] = (req.position[0], req.position[1], error != "relation")
    return objects, relations


RENDER_ERRORS = ("count", "color", "relation", "missing")  # the controlled errors `error_applies` knows


def error_applies(spec: PromptSpec, error: str) -> bool:
    if error == "count":
        return bool(spec.exclude) or spec.tag == "counting"
    if error == "color":
        return any(r.color for r in spec.include)
    if error == "relation":
        return any(r.position for r in spec.include)
    return error == "missing"


def _relation_ok(box: tuple, others: list[PlacedObject], relation: str, ref: int, wanted: bool) -> bool:
    for other in others:
        if other.group != ref:
            continue
        rels = relative_position(box, other.box)
        if wanted and rels != {relation}:
            return False
        if not wanted and rels != {_OPPOSITE[relation]}:
            return False
    return True


def _place(objects: list[tuple[str, str, int]], relations: dict, rng: np.random.Generator,
           size: int, align: int = 1) -> list[PlacedObject] | None:
    lo, hi = SIZE_SINGLE if len(objects) == 1 else SIZE_MULTI
    scale = size / IMAGE_SIZE
    placed: list[PlacedObject] = []
    for cls, color, group in objects:
        for _ in range(200):
            side = int(rng.integers(round(lo * scale), round(hi * scale) + 1)) | 1  # odd sides
            side = min(side, size - 3)
            first, stop = -(-1 // align), (size - side - 1) // align + 1  # x1 in [1, size - side), on the grid
            x1, y1 = (int(v) * align for v in rng.integers(first, stop, size=2))
            box = (x1, y1, x1 + side, y1 + side)
            if any(_gap(box, p.box) < MIN_GAP for p in placed):
                continue
            if group in relations and not _relation_ok(box, placed, *relations[group]):
                continue
            placed.append(PlacedObject(cls, color, box, group))
            break
        else:
            return None
    return placed


def _gap(a: tuple, b: tuple) -> int:
    """Pixels of empty space between two boxes (negative when they overlap)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def render_scene(spec: PromptSpec, rng: np.random.Generator, size: int = IMAGE_SIZE,
                 error: str | None = None, align: int = 1) -> tuple[Image.Image, list[PlacedObject]]:
    """One RGB image of the scene and the objects drawn, in drawing order.

    `align` > 1 puts every object's top-left corner on that pixel grid: with the image tokenizer's
    grid (4), a shape of a given size and colour is always the same token pattern, which a tiny
    generator learns far more easily than 16 sub-token offsets of it (tiny-shapes v4)."""
    if align < 1:
        raise InputError(f"align: must be at least 1, got {align}")
    check_in_world(spec)
    if error is not None and error not in ERRORS:
        raise InputError(f"error {error!r}: expected one of {', '.join(ERRORS)}")
    if error is not None and not error_applies(spec, error):
        raise InputError(f"error {error!r} cannot apply to {spec.tag} prompt {spec.prompt!r}")
    for _ in range(100):
        objects, relations = _plan(spec, rng, error)
        placed = _place(objects, relations, rng, size, align)
        if placed is not None:
            break
    else:
        raise InputError(f"cannot place the objects of {spec.prompt!r} in a {size}x{size} image")
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for obj in placed:
        canvas[place_mask(obj.cls, obj.box, (size, size))] = PALETTE[obj.color]
    return Image.fromarray(canvas, "RGB"), placed
