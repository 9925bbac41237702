"""What the understanding protocols share: batched answering, GenEval results matched to images, means.

Generated images are matched to their GenEval results by the trailing `NNNNN/samples/NNNN.png` of the
`filename` field, so a results file written with another spelling of the folder (relative, absolute,
another machine) still lines up; a missing or surplus row is an error, never a silent skip.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unirl_kit.distributed import RANK_TIMEOUT_S
from unirl_kit.eval.geneval.layout import ImageItem, load_image, scan_images
from unirl_kit.jsonl import check_fields, read_jsonl
from unirl_kit.types import InputError

Progress = Callable[[str, int], Callable[[int], None]]  # (label, total) -> advance(n)


def no_progress(label: str, total: int) -> Callable[[int], None]:
    """The silent progress reporter (tests, library use)."""
    return lambda n: None


def answer_all(backbone: Any, images: Sequence[Any], questions: Sequence[str], batch_size: int,
               max_new_tokens: int = 32, progress: Progress = no_progress, label: str = "answer",
               store: Path | None = None, ids: Sequence[str] | None = None) -> list[str]:
    """Greedy answers in batches of `batch_size`; a backbone returning the wrong count is a bug, said so.

    With `store` (a JSONL file) the answers are written as they come, a rerun answers only what is
    missing, and under torchrun the ranks share the questions (`ShardedJsonl`). A row is keyed by the
    item's id (default: its index; pass stable ids when the list can differ between runs) and its
    question."""
    if store is None:
        return _answer_batches(backbone, images, questions, range(len(questions)), batch_size, max_new_tokens,
                               progress(label, len(questions)))
    from unirl_kit.sharded import ShardedJsonl

    names = [str(i) for i in range(len(questions))] if ids is None else list(ids)
    keys = [f"{n}|{q}" for n, q in zip(names, questions, strict=True)]
    where = {k: i for i, k in enumerate(keys)}
    if len(where) != len(keys):
        raise RuntimeError(f"{label}: two questions share an id and a question")
    advance = progress(label, len(questions))

    def rows_for(batch: list[str]) -> list[dict[str, str]]:
        got = _answer_batches(backbone, images, questions, [where[k] for k in batch], len(batch), max_new_tokens,
                              advance)
        return [{"key": k, "answer": a} for k, a in zip(batch, got, strict=True)]

    store.parent.mkdir(parents=True, exist_ok=True)
    rows = ShardedJsonl(store, "key", {"key": str, "answer": str}).run_everywhere(
        keys, lambda k: k, rows_for, batch_size, timeout_s=RANK_TIMEOUT_S, stage="eval.understanding", label=label,
        show_progress=False, unit="answers")
    return [r["answer"] for r in rows]


def _answer_batches(backbone: Any, images: Sequence[Any], questions: Sequence[str], rows: Sequence[int],
                    batch_size: int, max_new_tokens: int, advance: Callable[[int], None]) -> list[str]:
    out: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ims, qs = [images[i] for i in chunk], [questions[i] for i in chunk]
        answers = backbone.answer(ims, qs, max_new_tokens=max_new_tokens, greedy=True)
        if len(answers) != len(qs):
            raise RuntimeError(f"backbone returned {len(answers)} answers for {len(qs)} questions")
        out.extend(answers)
        advance(len(qs))
    return out


def mean(values: Sequence[float]) -> float | None:
    """Mean, or None for an empty list (a tag with no items has no score, not 0)."""
    return float(sum(values) / len(values)) if values else None


@dataclass
class JudgedImage:
    """A generated image with the GenEval row the detector wrote for it."""

    item: ImageItem
    prompt_key: str  # the prompt folder name, e.g. "00012"
    gen_correct: bool
    detected: dict[str, int]  # class -> kept detections (GenEval's `details`)


def results_path(path: str) -> Path:
    """A results file, or a `unirl eval geneval` output folder holding results.jsonl."""
    p = Path(path)
    return p / "results.jsonl" if p.is_dir() else p


def _rel(filename: str) -> str:
    return "/".join(Path(filename).parts[-3:])


def judged_images(images_dir: str | None, geneval_results: str | None, need: str) -> list[JudgedImage]:
    """Every image of a generated folder with its GenEval verdict and detections."""
    if not images_dir or not geneval_results:
        raise InputError(f"{need} needs images_dir (from `unirl generate`) and geneval_results "
                         "(results.jsonl from `unirl eval geneval`)")
    items = scan_images(Path(images_dir))
    path = results_path(geneval_results)
    by_rel: dict[str, tuple[int, dict]] = {}
    from unirl_kit.eval.geneval.runner import RESULT_FIELDS

    for lineno, row in read_jsonl(path):
        try:
            check_fields(row, RESULT_FIELDS, f"{path}:{lineno}")
        except InputError as exc:
            raise InputError(f"{exc}; expected rows of `unirl eval geneval`") from None
        by_rel[_rel(row["filename"])] = (lineno, row)
    out = []
    for item in items:
        if item.rel not in by_rel:
            raise InputError(f"{path}: no row for {item.rel} of {images_dir}; run `unirl eval geneval` on "
                             "this folder first")
        lineno, row = by_rel.pop(item.rel)
        if row["tag"] != item.spec.tag:
            raise InputError(f"{path}:{lineno}: tag {row['tag']!r} but {item.rel} has a {item.spec.tag!r} "
                             "prompt; these results belong to another folder")
        out.append(JudgedImage(item, item.rel.split("/")[0], bool(row["correct"]), _detected(row, f"{path}:{lineno}")))
    if by_rel:
        extra = next(iter(by_rel))
        raise InputError(f"{path}: has rows for images not in {images_dir} (e.g. {extra}); "
                         "these results belong to another folder")
    return out


def _detected(row: dict, where: str) -> dict[str, int]:
    details = row.get("details")
    if details is None:
        return {}
    try:
        parsed = json.loads(details) if isinstance(details, str) else details
        return {str(cls): len(boxes) for cls, boxes in parsed.items() if boxes}
    except (json.JSONDecodeError, AttributeError, TypeError):
        raise InputError(f"{where}: field 'details' is not GenEval's class -> boxes mapping") from None


class LazyImages(Sequence):
    """Images read when a batch asks for them, so a large set never sits in memory at once."""

    def __init__(self, keys: Sequence[Any], load: Callable[[Any], Any]) -> None:
        self.keys, self.load = list(keys), load

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.load(k) for k in self.keys[index]]
        return self.load(self.keys[index])


def load_images(images_dir: str, judged: Sequence[JudgedImage]) -> LazyImages:
    """The RGB images of some judged items, in order, read lazily."""
    return LazyImages([j.item.rel for j in judged], lambda rel: load_image(Path(images_dir), rel))
