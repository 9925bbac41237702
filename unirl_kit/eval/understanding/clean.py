"""QA accuracy on clean renders of a synthetic world: understanding measured apart from generation.

Scenes are drawn fresh from the world (seeded), rendered without errors, and the backbone answers
UniRL's question for each; an answer counts as right when every check of `grade_answer` passes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from unirl_kit.eval.understanding.common import Progress, answer_all, no_progress
from unirl_kit.prompts.answers import grade_answer
from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.prompts.qa import question_answer
from unirl_kit.types import GENEVAL_TAGS, InputError, PromptSpec


def clean_scenes(world: str, per_tag: int, seed: int, size: int) -> list[tuple[PromptSpec, Any]]:
    """`per_tag` (spec with question/answer, PIL image) pairs for each of GenEval's six tags."""
    return [(spec, image) for spec, image, _ in clean_scenes_with_objects(world, per_tag, seed, size)]


def clean_scenes_with_objects(world: str, per_tag: int, seed: int,
                              size: int) -> list[tuple[PromptSpec, Any, tuple[str, ...]]]:
    """As `clean_scenes`, plus the classes drawn in each image (the truth for POPE's questions)."""
    from PIL import Image

    from unirl_kit.worlds.shapes.render import render_scene

    if world != "shapes":
        raise InputError(f"clean renders exist for the shapes world only, not {world!r}")
    rng = np.random.default_rng([seed, 31])
    the_world = get_world(world)
    out = []
    for tag in GENEVAL_TAGS:
        for _ in range(per_tag):
            spec = sample_prompt(tag, the_world, rng)
            q, a = question_answer(spec)
            image, placed = render_scene(spec, rng, size)
            classes = tuple(dict.fromkeys(p.cls for p in placed))
            out.append((dataclasses.replace(spec, question=q, answer=a), Image.fromarray(np.asarray(image)), classes))
    return out


def clean_render_accuracy(backbone: Any, per_tag: int = 50, seed: int = 0, world: str = "shapes",
                          batch_size: int = 32, max_new_tokens: int = 32,
                          progress: Progress = no_progress, store: Path | None = None) -> dict[str, Any]:
    """Per-tag accuracy and mean graded credit of greedy answers; `overall` is the mean over tags."""
    scenes = clean_scenes(world, per_tag, seed, backbone.image_size)
    answers = answer_all(backbone, [im for _, im in scenes], [s.question for s, _ in scenes], batch_size,
                         max_new_tokens, progress, "clean QA", store)
    rows = []
    for (spec, _), answer in zip(scenes, answers, strict=True):
        grade = grade_answer(spec, answer)
        rows.append({"tag": spec.tag, "prompt": spec.prompt, "question": spec.question, "truth": spec.answer,
                     "answer": answer, "correct": grade.correct, "credit": grade.score})
    per_tag_acc = {t: float(np.mean([r["correct"] for r in rows if r["tag"] == t])) for t in GENEVAL_TAGS}
    credit = {t: float(np.mean([r["credit"] for r in rows if r["tag"] == t])) for t in GENEVAL_TAGS}
    return {"accuracy": per_tag_acc, "credit": credit, "overall": float(np.mean(list(per_tag_acc.values()))),
            "per_tag": per_tag, "seed": seed, "rows": rows}
