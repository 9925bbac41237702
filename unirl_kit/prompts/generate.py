"""Prompt sets in GenEval's six tags, with GenEval's templates and sampling rules, for any world.

Rules kept from the benchmark's generator: two-object, position and colour-attribution prompts use
two different classes; counting asks for 2-4 and excludes one more; colour prompts never colour the
COCO class 'person'; colour attribution uses two different colours. Prompts are unique within a set.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import numpy as np

from unirl_kit.prompts.language import NUMBER_WORDS, make_plural, with_article
from unirl_kit.prompts.qa import question_answer
from unirl_kit.types import GENEVAL_COLORS, GENEVAL_TAGS, RELATIONS, InputError, PromptSpec, Requirement


@dataclass(frozen=True)
class World:
    name: str
    classes: tuple[str, ...]
    colors: tuple[str, ...]
    colorless: frozenset[str] = frozenset()  # classes never given a colour in prompts


def get_world(name: str) -> World:
    if name == "shapes":
        from unirl_kit.worlds.shapes.vocab import COLORS, SHAPES

        return World("shapes", SHAPES, COLORS)
    if name == "coco":
        text = resources.files("unirl_kit.eval.geneval").joinpath("data/object_names.txt").read_text()
        return World("coco", tuple(ln.strip() for ln in text.splitlines() if ln.strip()),
                     GENEVAL_COLORS, frozenset({"person"}))
    raise InputError(f"unknown world {name!r}; expected shapes or coco")


def sample_prompt(tag: str, w: World, rng: np.random.Generator) -> PromptSpec:
    """One random prompt of a tag (no question/answer yet), by GenEval's sampling rules."""
    cls = w.classes
    colorable = [c for c in cls if c not in w.colorless]
    if tag == "single_object":
        c = str(rng.choice(cls))
        return PromptSpec(tag, f"a photo of {with_article(c)}", (Requirement(c, 1),))
    if tag == "two_object":
        a, b = (str(x) for x in rng.choice(cls, size=2, replace=False))
        return PromptSpec(tag, f"a photo of {with_article(a)} and {with_article(b)}",
                          (Requirement(a, 1), Requirement(b, 1)))
    if tag == "counting":
        c, n = str(rng.choice(cls)), int(rng.integers(2, 4, endpoint=True))
        return PromptSpec(tag, f"a photo of {NUMBER_WORDS[n]} {make_plural(c)}",
                          (Requirement(c, n),), (Requirement(c, n + 1),))
    if tag == "colors":
        c, col = str(rng.choice(colorable)), str(rng.choice(w.colors))
        return PromptSpec(tag, f"a photo of {with_article(col)} {c}", (Requirement(c, 1, col),))
    if tag == "position":
        a, b = (str(x) for x in rng.choice(cls, size=2, replace=False))
        rel = str(rng.choice(RELATIONS))
        return PromptSpec(tag, f"a photo of {with_article(a)} {rel} {with_article(b)}",
                          (Requirement(b, 1), Requirement(a, 1, position=(rel, 0))))
    if tag == "color_attr":
        a, b = (str(x) for x in rng.choice(colorable, size=2, replace=False))
        ca, cb = (str(x) for x in rng.choice(w.colors, size=2, replace=False))
        return PromptSpec(tag, f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}",
                          (Requirement(a, 1, ca), Requirement(b, 1, cb)))
    raise InputError(f"unknown tag {tag!r}; expected one of {', '.join(GENEVAL_TAGS)}")


def tag_capacity(tag: str, w: World) -> int:
    """How many distinct prompts a tag has in a world."""
    n, k, m = len(w.classes), len(w.colors), len([c for c in w.classes if c not in w.colorless])
    return {"single_object": n, "two_object": n * (n - 1), "counting": 3 * n, "colors": m * k,
            "position": 4 * n * (n - 1), "color_attr": m * (m - 1) * k * (k - 1)}[tag]


def generate_prompts(world: str, n: int, seed: int, exclude: Mapping[str, str] | None = None,
                     tags: tuple[str, ...] = GENEVAL_TAGS) -> list[PromptSpec]:
    """`n` unique prompts spread evenly over `tags` (a tag with too few distinct prompts left gives
    them all, the rest go to the other tags), none of them a key of `exclude` (prompt -> its tag),
    each with its question and answer."""
    w = get_world(world)
    rng = np.random.default_rng(seed)
    exclude = dict(exclude or {})
    taken = Counter(exclude.values())
    free = {t: tag_capacity(t, w) - taken[t] for t in tags}
    quota = {t: 0 for t in tags}
    remaining = n
    while remaining > 0 and any(quota[t] < free[t] for t in tags):
        for t in tags:
            if remaining > 0 and quota[t] < free[t]:
                quota[t] += 1
                remaining -= 1
    out: list[PromptSpec] = []
    seen = set(exclude)
    for t in tags:
        got, tries = 0, 0
        while got < quota[t] and tries < 200 * quota[t] + 1000:
            tries += 1
            spec = sample_prompt(t, w, rng)
            if spec.prompt in seen:
                continue
            seen.add(spec.prompt)
            q, a = question_answer(spec)
            out.append(dataclasses.replace(spec, question=q, answer=a))
            got += 1
    return out
