"""The five protocols behind one interface: `plan` checks every input (cheap, before the model loads) and
returns, per protocol, a function of the backbone giving {"metrics": ..., "rows": [...]}.

geneval_correct  UniRL's: self-questions on the detector-approved generated images (selfqa.py)
clean            self-questions on clean renders of the shapes world (clean.py)
pope             yes/no object existence on clean renders or generated images (pope.py)
vqa              a local question/answers JSONL (vqa.py)
imbalance        per prompt: generation right vs understanding right (imbalance.py)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unirl_kit.eval.understanding.common import (
    LazyImages,
    Progress,
    answer_all,
    judged_images,
    load_images,
    no_progress,
)
from unirl_kit.types import InputError

PROTOCOLS: tuple[str, ...] = ("geneval_correct", "clean", "pope", "vqa", "imbalance")
NEEDS_IMAGES = ("geneval_correct", "imbalance")


@dataclass
class Context:
    """What the protocols of one run share: answering settings and the self-QA answers already given."""

    batch_size: int = 32
    max_new_tokens: int = 32
    progress: Progress = no_progress
    self_answers: dict[str, str] = field(default_factory=dict)  # image rel -> answer, geneval_correct + imbalance
    answers_dir: Path | None = None  # the running protocol's answer files (set per protocol by the runner)

    def store(self, label: str) -> Path | None:
        """Where the answers asked under `label` are kept as they come, so a killed run resumes them."""
        if self.answers_dir is None:
            return None
        return self.answers_dir / (re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") + ".jsonl")

    def answerer(self, backbone: Any, label: str) -> Callable[[Any, list[str]], list[str]]:
        return lambda images, questions: answer_all(backbone, images, questions, self.batch_size,
                                                    self.max_new_tokens, self.progress, label, self.store(label))


Task = Callable[[Any, Context], dict[str, Any]]


def check_names(names: list[str]) -> None:
    if not names:
        raise InputError(f"protocols: give at least one of {', '.join(PROTOCOLS)}")
    for name in names:
        if name not in PROTOCOLS:
            import difflib

            close = difflib.get_close_matches(name, PROTOCOLS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"protocol {name!r} is unknown{hint}; known: {', '.join(PROTOCOLS)}")
    if len(set(names)) != len(names):
        raise InputError(f"protocols: {names} names a protocol twice")


def plan(cfg: Any, names: list[str]) -> dict[str, Task]:
    """One ready-to-run task per protocol name, every input already checked."""
    check_names(names)
    return {name: _PLANNERS[name](cfg) for name in names}


def _plan_geneval_correct(cfg: Any) -> Task:
    from unirl_kit.eval.understanding.selfqa import geneval_correct

    judged_images(cfg.images_dir, cfg.geneval_results, "protocol geneval_correct")
    return lambda bb, ctx: geneval_correct(bb, cfg.images_dir, cfg.geneval_results, ctx.batch_size,
                                           ctx.max_new_tokens, ctx.progress, ctx.self_answers, ctx.store("self QA"))


def _plan_imbalance(cfg: Any) -> Task:
    from unirl_kit.eval.understanding.imbalance import imbalance_protocol

    judged_images(cfg.images_dir, cfg.geneval_results, "protocol imbalance")
    return lambda bb, ctx: imbalance_protocol(bb, cfg.images_dir, cfg.geneval_results, cfg.imbalance.gen_rule,
                                              cfg.imbalance.und_rule, ctx.batch_size, ctx.max_new_tokens,
                                              ctx.progress, ctx.self_answers, ctx.store("self QA"))


def _plan_clean(cfg: Any) -> Task:
    from unirl_kit.eval.understanding.clean import clean_render_accuracy

    if cfg.world != "shapes":
        raise InputError(f"world: clean renders exist for the shapes world only, not {cfg.world!r}")

    def task(bb: Any, ctx: Context) -> dict[str, Any]:
        result = clean_render_accuracy(bb, cfg.per_tag, cfg.seed, cfg.world, ctx.batch_size, ctx.max_new_tokens,
                                       ctx.progress, ctx.store("clean QA"))
        rows = result.pop("rows")
        result["overall_credit"] = float(np.mean(list(result["credit"].values())))
        return {"metrics": result, "rows": rows}

    return task


def _plan_pope(cfg: Any) -> Task:
    from unirl_kit.eval.understanding.pope import run_pope

    opts = cfg.pope
    if opts.source == "clean":
        if opts.n_images < 1:
            raise InputError(f"pope.n_images: clean renders need a count >= 1, got {opts.n_images}")
        if cfg.world != "shapes":
            raise InputError(f"world: clean renders exist for the shapes world only, not {cfg.world!r}")

        def task(bb: Any, ctx: Context) -> dict[str, Any]:
            images, ids, present, vocab = _clean_pope_source(cfg.world, opts.n_images, cfg.seed, bb.image_size)
            return run_pope(ctx.answerer(bb, "POPE"), images, ids, present, vocab, opts.strategy, cfg.seed)

        return task
    judged = judged_images(cfg.images_dir, cfg.geneval_results, "pope.source=generated")
    if 0 < opts.n_images < len(judged):
        keep = np.sort(np.random.default_rng([cfg.seed, 61]).choice(len(judged), opts.n_images, replace=False))
        judged = [judged[i] for i in keep]
    present = [set(j.detected) for j in judged]
    vocab = _vocabulary(judged)
    images = load_images(str(cfg.images_dir), judged)

    def generated_task(bb: Any, ctx: Context) -> dict[str, Any]:
        per_question = LazyImages(list(range(len(judged))), lambda i: images[i])
        return run_pope(ctx.answerer(bb, "POPE"), per_question, [j.item.rel for j in judged], present, vocab,
                        opts.strategy, cfg.seed)

    return generated_task


def _clean_pope_source(world: str, n: int, seed: int, size: int) -> tuple[list, list[str], list[set[str]], list[str]]:
    """n clean renders over all six tags (shuffled, seeded) with the classes drawn in each."""
    from unirl_kit.eval.understanding.clean import clean_scenes_with_objects
    from unirl_kit.prompts.generate import get_world

    scenes = clean_scenes_with_objects(world, math.ceil(n / 6), seed, size)
    order = np.random.default_rng([seed, 67]).permutation(len(scenes))[:n]
    chosen = [scenes[i] for i in sorted(order)]
    ids = [f"clean:{i:05d}:{scenes[i][0].prompt}" for i in sorted(order)]
    return [im for _, im, _ in chosen], ids, [set(objs) for _, _, objs in chosen], list(get_world(world).classes)


def _vocabulary(judged: list) -> list[str]:
    """The shapes world's classes when every class seen is a shape, else GenEval's 80 COCO names."""
    from unirl_kit.prompts.generate import get_world

    seen = {c for j in judged for c in j.detected}
    seen |= {r.cls for j in judged for r in (*j.item.spec.include, *j.item.spec.exclude)}
    shapes, coco = get_world("shapes").classes, get_world("coco").classes
    for vocab in (shapes, coco):
        if seen <= set(vocab):
            return list(vocab)
    return list(coco) + sorted(seen - set(coco))  # a custom detector's extra classes join the vocabulary


def _plan_vqa(cfg: Any) -> Task:
    from unirl_kit.eval.understanding.vqa import read_vqa, run_vqa

    if not cfg.vqa_file:
        raise InputError("protocol vqa needs vqa_file (--vqa FILE.jsonl)")
    items = read_vqa(cfg.vqa_file)
    return lambda bb, ctx: run_vqa(ctx.answerer(bb, "VQA"), items)


_PLANNERS: dict[str, Callable[[Any], Task]] = {
    "geneval_correct": _plan_geneval_correct, "clean": _plan_clean, "pope": _plan_pope, "vqa": _plan_vqa,
    "imbalance": _plan_imbalance,
}
