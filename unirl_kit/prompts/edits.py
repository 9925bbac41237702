"""Minimal edits of a prompt: the same scene with one fact changed (another shape, colour, count or
relation, or two colours swapped).

Why: a self-judge that reads the probability of the right description alone confuses "the image
shows it" with "the sentence is likely anyway". Comparing the right description with its minimal
edits turns the model's likelihood into a choice among near-misses, the way a generative classifier
(or VQAScore's yes/no against its alternatives) does, so what is scored is exactly the fact that could
be wrong in the image.
"""

from __future__ import annotations

from unirl_kit.prompts.generate import World, get_world, make_spec
from unirl_kit.types import RELATIONS, PromptSpec

MAX_EDIT_COUNT = 5  # counts the world's prompts may name (number words up to five)


def world_of(spec: PromptSpec) -> World:
    """The shapes world when every class of the prompt is a shape, else COCO."""
    shapes = get_world("shapes")
    classes = {r.cls for r in (*spec.include, *spec.exclude)}
    return shapes if classes <= set(shapes.classes) else get_world("coco")


def minimal_edits(spec: PromptSpec, world: World | None = None, max_classes: int | None = None) -> list[PromptSpec]:
    """Every prompt that differs from `spec` in one fact, deduplicated, in a fixed order.

    `max_classes` caps the class substitutions per object (COCO has 80 classes; the first ones of the
    world's list are used), so the candidate count stays bounded for large worlds."""
    w = world or world_of(spec)
    inc = spec.include

    def others(cls: str, *avoid: str) -> list[str]:
        out = [c for c in w.classes if c != cls and c not in avoid]
        return out[:max_classes] if max_classes else out

    def other_colors(color: str | None) -> list[str]:
        return [c for c in w.colors if c != color]

    tag = spec.tag
    edits: list[PromptSpec] = []
    if tag == "single_object":
        edits = [make_spec(tag, c) for c in others(inc[0].cls)]
    elif tag == "two_object":
        a, b = inc[0].cls, inc[1].cls
        edits = [make_spec(tag, c, b) for c in others(a, b)] + [make_spec(tag, a, c) for c in others(b, a)]
    elif tag == "counting":
        a, n = inc[0].cls, inc[0].count
        edits = [make_spec(tag, a, count=m) for m in (n - 1, n + 1) if 1 <= m <= MAX_EDIT_COUNT]
        edits += [make_spec(tag, c, count=n) for c in others(a)]
    elif tag == "colors":
        a, ca = inc[0].cls, inc[0].color
        edits = [make_spec(tag, a, color_a=c) for c in other_colors(ca)]
        edits += [make_spec(tag, c, color_a=ca) for c in others(a) if c not in w.colorless]
    elif tag == "position":
        ref, subject = inc[0].cls, inc[1].cls
        rel = inc[1].position[0] if inc[1].position else RELATIONS[0]
        edits = [make_spec(tag, subject, ref, relation=r) for r in RELATIONS if r != rel]
        edits += [make_spec(tag, c, ref, relation=rel) for c in others(subject, ref)]
        edits += [make_spec(tag, subject, c, relation=rel) for c in others(ref, subject)]
    elif tag == "color_attr":
        (a, ca), (b, cb) = (inc[0].cls, inc[0].color), (inc[1].cls, inc[1].color)
        edits = [make_spec(tag, a, b, color_a=cb, color_b=ca)]
        edits += [make_spec(tag, a, b, color_a=c, color_b=cb) for c in other_colors(ca) if c != cb]
        edits += [make_spec(tag, a, b, color_a=ca, color_b=c) for c in other_colors(cb) if c != ca]
        edits += [make_spec(tag, c, b, color_a=ca, color_b=cb) for c in others(a, b) if c not in w.colorless]
        edits += [make_spec(tag, a, c, color_a=ca, color_b=cb) for c in others(b, a) if c not in w.colorless]
    else:
        raise ValueError(f"no minimal edits for tag {tag!r}")
    seen = {spec.prompt}
    out = []
    for e in edits:
        if e.prompt not in seen:
            seen.add(e.prompt)
            out.append(e)
    return out
