"""UniRL's protocol: the model answers its own prompt's question about the images it generated.

Only images GenEval's detector judged correct are asked about (UniRL's choice: on those the prompt's
ground truth is also the truth of the picture, so a wrong answer is an understanding error, not a
drawing error). Accuracy is per question type (tag), full marks from `grade_answer`; credit is its
graded share. `overall` is the unweighted mean over tags, as GenEval averages its tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unirl_kit.eval.understanding.common import (
    JudgedImage,
    Progress,
    answer_all,
    judged_images,
    load_images,
    mean,
    no_progress,
)
from unirl_kit.prompts.answers import grade_answer
from unirl_kit.prompts.qa import question_and_truth
from unirl_kit.types import GENEVAL_TAGS


def ensure_answers(backbone: Any, images_dir: str, judged: Sequence[JudgedImage], cache: dict[str, str],
                   batch_size: int, max_new_tokens: int = 32, progress: Progress = no_progress,
                   store: Path | None = None) -> None:
    """Answer the images not yet in `cache` (keyed by rel path), so protocols sharing images ask once;
    `store`: answers kept as they come, by image path (see `answer_all`)."""
    todo = [j for j in judged if j.item.rel not in cache]
    if not todo:
        return
    answers = answer_all(backbone, load_images(images_dir, todo), [question_and_truth(j.item.spec)[0] for j in todo],
                         batch_size, max_new_tokens, progress, "self QA", store, [j.item.rel for j in todo])
    cache.update((j.item.rel, a) for j, a in zip(todo, answers, strict=True))


def graded_rows(judged: Sequence[JudgedImage], cache: dict[str, str]) -> list[dict[str, Any]]:
    """One row per answered image: question, the prompt's answer, the model's, and its grade."""
    rows = []
    for j in judged:
        spec, answer = j.item.spec, cache[j.item.rel]
        grade = grade_answer(spec, answer)
        question, truth = question_and_truth(spec)
        rows.append({"image": j.item.rel, "prompt_key": j.prompt_key, "tag": spec.tag, "prompt": spec.prompt,
                     "question": question, "truth": truth, "answer": answer,
                     "gen_correct": j.gen_correct, "correct": grade.correct, "credit": grade.score})
    return rows


def tag_order(tags: Sequence[str]) -> list[str]:
    """GenEval's tag order first, then any other tag in order of appearance."""
    seen = list(dict.fromkeys(tags))
    return [t for t in GENEVAL_TAGS if t in seen] + [t for t in seen if t not in GENEVAL_TAGS]


def per_tag_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """accuracy/credit/count per tag and their unweighted means over tags."""
    tags = tag_order([r["tag"] for r in rows])
    acc = {t: mean([float(r["correct"]) for r in rows if r["tag"] == t]) for t in tags}
    credit = {t: mean([float(r["credit"]) for r in rows if r["tag"] == t]) for t in tags}
    return {"accuracy": acc, "credit": credit, "answered": {t: sum(r["tag"] == t for r in rows) for t in tags},
            "overall": mean([v for v in acc.values() if v is not None]),
            "overall_credit": mean([v for v in credit.values() if v is not None])}


def geneval_correct(backbone: Any, images_dir: str | None, geneval_results: str | None, batch_size: int = 32,
                    max_new_tokens: int = 32, progress: Progress = no_progress,
                    cache: dict[str, str] | None = None, store: Path | None = None) -> dict[str, Any]:
    """UniRL's understanding score on the detector-approved images of a generated folder."""
    judged = judged_images(images_dir, geneval_results, "protocol geneval_correct")
    chosen = [j for j in judged if j.gen_correct]
    cache = {} if cache is None else cache
    ensure_answers(backbone, str(images_dir), chosen, cache, batch_size, max_new_tokens, progress, store)
    rows = graded_rows(chosen, cache)
    metrics = {**per_tag_metrics(rows), "images": len(judged), "images_judged_correct": len(chosen)}
    return {"metrics": metrics, "rows": rows}
