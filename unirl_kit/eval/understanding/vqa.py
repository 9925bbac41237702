"""VQA on a local JSONL: one question per line about an image beside the file.

Line format: {"image": "imgs/1.png", "question": "...", "answers": ["two", "2", ...], "type": "count"}
(`image` relative to the JSONL's folder; `type` optional; other fields are kept out of the way, so a
converted VQAv2 file may keep its ids). Scores, after `normalize` of both sides:
  accuracy       the answer equals any accepted answer;
  soft accuracy  VQA's min(#accepted answers equal to it / 3, 1): with 10 human answers, 3 agreeing
                 annotators give full credit (the simple form, not the official 10-choose-9 average).
All lines are checked (fields, image files) before the model loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unirl_kit.eval.understanding.common import LazyImages, mean
from unirl_kit.jsonl import read_jsonl
from unirl_kit.prompts.answers import normalize
from unirl_kit.types import InputError

UNTYPED = "all"


@dataclass(frozen=True)
class VqaItem:
    where: str  # "file:line", for messages and rows
    image: Path
    question: str
    answers: tuple[str, ...]
    type: str


def read_vqa(path: str | Path) -> list[VqaItem]:
    """Every line of a VQA JSONL, checked; a bad line fails with file:line and the field."""
    path = Path(path)
    items = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object with image, question, answers")
        for key in ("image", "question"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise InputError(f"{where}: field {key!r} must be a non-empty string, got {obj.get(key)!r}")
        answers = obj.get("answers")
        if (not isinstance(answers, list) or not answers
                or not all(isinstance(a, str) and a.strip() for a in answers)):
            raise InputError(f"{where}: field 'answers' must be a non-empty list of non-empty strings, "
                             f"got {answers!r}")
        kind = obj.get("type", UNTYPED)
        if not isinstance(kind, str) or not kind:
            raise InputError(f"{where}: field 'type' must be a non-empty string when given, got {kind!r}")
        image = path.parent / obj["image"]
        if not image.is_file():
            raise InputError(f"{where}: field 'image': {image} not found (paths are relative to the JSONL's folder)")
        items.append(VqaItem(where, image, obj["question"], tuple(answers), kind))
    if not items:
        raise InputError(f"{path}: no questions (expected one JSON object per line)")
    return items


def score_answer(answer: str, accepted: Sequence[str]) -> tuple[bool, float]:
    """(exact match with any accepted answer, VQA soft accuracy), both after normalisation."""
    said = normalize(answer)
    matches = sum(normalize(a) == said for a in accepted)
    return matches > 0, min(matches / 3.0, 1.0)


def _load(path: Path) -> Any:
    """The RGB image, EXIF-transposed; any format PIL reads (VQA sets ship JPEGs)."""
    from unirl_kit.images import open_image

    return open_image(path, mode="RGB", transpose=True)


def run_vqa(answer: Callable[[Sequence[Any], list[str]], list[str]], items: Sequence[VqaItem]) -> dict[str, Any]:
    """Ask every question through `answer(images, questions)`; overall and per-type scores, one row each."""
    answers = answer(LazyImages([it.image for it in items], _load), [it.question for it in items])
    rows = []
    for it, text in zip(items, answers, strict=True):
        exact, soft = score_answer(text, it.answers)
        rows.append({"where": it.where, "image": str(it.image), "type": it.type, "question": it.question,
                     "answers": list(it.answers), "answer": text, "correct": exact, "soft": soft})
    types = list(dict.fromkeys(r["type"] for r in rows))
    per_type = {t: {"accuracy": mean([float(r["correct"]) for r in rows if r["type"] == t]),
                    "soft_accuracy": mean([r["soft"] for r in rows if r["type"] == t]),
                    "questions": sum(r["type"] == t for r in rows)} for t in types}
    metrics = {"accuracy": mean([float(r["correct"]) for r in rows]), "soft_accuracy": mean([r["soft"] for r in rows]),
               "questions": len(rows), "types": per_type}
    return {"metrics": metrics, "rows": rows}
