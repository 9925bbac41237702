"""Prompt sets in GenEval's six tags, with GenEval's templates and sampling rules, for any world.

Rules kept from the benchmark's generator: two-object, position and colour-attribution prompts use
two different classes; counting asks for 2-4 and excludes one more; colour prompts never colour the
COCO class 'person'; colour attribution uses two different colours. Prompts are unique within a set.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from unirl_kit.prompts.language import NUMBER_WORDS, make_plural, with_article
from unirl_kit.prompts.qa import DEFAULT_STYLE, question_answer
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


def make_spec(tag: str, a: str, b: str | None = None, *, count: int = 1, color_a: str | None = None,
              color_b: str | None = None, relation: str | None = None) -> PromptSpec:
    """A tag's prompt in GenEval's template, from its parts (no question/answer yet). Position: `a` is
    `relation` `b` ("a photo of a {a} {relation} a {b}"); counting: `count` of `a` (1: the single template)."""
    if tag == "single_object" or (tag == "counting" and count == 1):
        return PromptSpec(tag, f"a photo of {with_article(a)}", (Requirement(a, 1),),
                          (Requirement(a, 2),) if tag == "counting" else ())
    if tag == "two_object":
        return PromptSpec(tag, f"a photo of {with_article(a)} and {with_article(b)}",
                          (Requirement(a, 1), Requirement(b, 1)))
    if tag == "counting":
        return PromptSpec(tag, f"a photo of {NUMBER_WORDS[count]} {make_plural(a)}",
                          (Requirement(a, count),), (Requirement(a, count + 1),))
    if tag == "colors":
        return PromptSpec(tag, f"a photo of {with_article(color_a)} {a}", (Requirement(a, 1, color_a),))
    if tag == "position":
        return PromptSpec(tag, f"a photo of {with_article(a)} {relation} {with_article(b)}",
                          (Requirement(b, 1), Requirement(a, 1, position=(relation, 0))))
    if tag == "color_attr":
        return PromptSpec(tag, f"a photo of {with_article(color_a)} {a} and {with_article(color_b)} {b}",
                          (Requirement(a, 1, color_a), Requirement(b, 1, color_b)))
    raise InputError(f"unknown tag {tag!r}; expected one of {', '.join(GENEVAL_TAGS)}")


def sample_prompt(tag: str, w: World, rng: np.random.Generator) -> PromptSpec:
    """One random prompt of a tag (no question/answer yet), by GenEval's sampling rules."""
    cls = w.classes
    colorable = [c for c in cls if c not in w.colorless]
    if tag == "single_object":
        return make_spec(tag, str(rng.choice(cls)))
    if tag == "two_object":
        a, b = (str(x) for x in rng.choice(cls, size=2, replace=False))
        return make_spec(tag, a, b)
    if tag == "counting":
        c, n = str(rng.choice(cls)), int(rng.integers(2, 4, endpoint=True))
        return make_spec(tag, c, count=n)
    if tag == "colors":
        c, col = str(rng.choice(colorable)), str(rng.choice(w.colors))
        return make_spec(tag, c, color_a=col)
    if tag == "position":
        a, b = (str(x) for x in rng.choice(cls, size=2, replace=False))
        return make_spec(tag, a, b, relation=str(rng.choice(RELATIONS)))
    if tag == "color_attr":
        a, b = (str(x) for x in rng.choice(colorable, size=2, replace=False))
        ca, cb = (str(x) for x in rng.choice(w.colors, size=2, replace=False))
        return make_spec(tag, a, b, color_a=ca, color_b=cb)
    raise InputError(f"unknown tag {tag!r}; expected one of {', '.join(GENEVAL_TAGS)}")


def tag_capacity(tag: str, w: World) -> int:
    """How many distinct prompts a tag has in a world."""
    n, k, m = len(w.classes), len(w.colors), len([c for c in w.classes if c not in w.colorless])
    return {"single_object": n, "two_object": n * (n - 1), "counting": 3 * n, "colors": m * k,
            "position": 4 * n * (n - 1), "color_attr": m * (m - 1) * k * (k - 1)}[tag]


def generate_prompts(world: str, n: int, seed: int, exclude: Mapping[str, str] | None = None,
                     tags: tuple[str, ...] = GENEVAL_TAGS, style: str = DEFAULT_STYLE) -> list[PromptSpec]:
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
    seen = set(exclude)
    return [p for t in tags for p in _draw(t, quota[t], w, rng, seen, style)]


def _draw(tag: str, count: int, w: World, rng: np.random.Generator, seen: set[str],
          style: str = DEFAULT_STYLE) -> list[PromptSpec]:
    """Up to `count` new prompts of `tag` not in `seen` (which grows), with question and answer."""
    out: list[PromptSpec] = []
    tries = 0
    while len(out) < count and tries < 200 * count + 1000:
        tries += 1
        spec = sample_prompt(tag, w, rng)
        if spec.prompt in seen:
            continue
        seen.add(spec.prompt)
        q, a = question_answer(spec, style)
        out.append(dataclasses.replace(spec, question=q, answer=a))
    return out


def _reused(spec: PromptSpec, style: str) -> PromptSpec:
    """A held-out prompt reused for training: marked `held_out: false`, asked in `style`."""
    q, a = question_answer(spec, style)
    return dataclasses.replace(spec, question=q, answer=a, extra=(*spec.extra, ("held_out", False)))


def share_quotas(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    """`n` split by weight, largest remainders first (ties in tag order), so the quotas sum to `n`."""
    total = sum(shares.values())
    if not shares or total <= 0 or any(v < 0 for v in shares.values()):
        raise InputError(f"shares: weights must be >= 0 with a positive sum, got {dict(shares)}")
    exact = {t: n * v / total for t, v in shares.items()}
    quota = {t: int(x) for t, x in exact.items()}
    order = sorted(shares, key=lambda t: -(exact[t] - quota[t]))
    for t in order[: n - sum(quota.values())]:
        quota[t] += 1
    return quota


def generate_training_prompts(world: str, n: int, seed: int, shares: Mapping[str, float],
                              held_out: Sequence[PromptSpec] = (), style: str = DEFAULT_STYLE) -> list[PromptSpec]:
    """`n` training prompts with a share per tag (weights), kept out of `held_out` wherever the tag's
    prompt space allows. Where it does not (the shapes world has 6 single-object prompts), the tag is
    filled with the held-out set's own prompts of that tag (marked `held_out: false`, trained with other
    image seeds), and a tag with fewer distinct prompts than its quota repeats them, so every tag keeps
    its share under the trainers' uniform draw."""
    unknown = sorted(set(shares) - set(GENEVAL_TAGS))
    if unknown:
        raise InputError(f"shares: {unknown[0]!r} is not a tag; expected some of {', '.join(GENEVAL_TAGS)}")
    w = get_world(world)
    rng = np.random.default_rng(seed)
    seen = {s.prompt for s in held_out}
    out: list[PromptSpec] = []
    for tag, quota in share_quotas(n, shares).items():
        fresh = _draw(tag, quota, w, rng, seen, style)
        reused = [_reused(s, style) for s in held_out if s.tag == tag]
        pool = fresh + reused[: max(0, quota - len(fresh))]
        out += [pool[i % len(pool)] for i in range(quota)] if pool else []
    return out
