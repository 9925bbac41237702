"""Generation/understanding imbalance over prompts: how often the model can draw what it cannot read back,
or read what it cannot draw (UniRL's motivating measurement).

Per prompt, from its K generated images:
  gen right: GenEval judged the images correct by `gen_rule` (default majority);
  und right: the model's answer to the prompt's own question, asked about each of those images (all of
             them, not only the correct ones, so every prompt has a value), is correct by `und_rule`.
Rules: `any` (at least one), `majority` (strictly more than half: 2 of 4 is not a majority, so a tie
counts as wrong), `all`. The grading truth is the prompt's answer; on an image drawn wrong that is what
was asked for rather than what is shown, which is the sense of "the model understands its prompt".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from unirl_kit.eval.understanding.common import Progress, judged_images, no_progress
from unirl_kit.eval.understanding.selfqa import ensure_answers, graded_rows

Rule = Literal["any", "majority", "all"]


def aggregate(flags: Sequence[bool], rule: Rule) -> bool:
    """One verdict for a prompt from its images' verdicts."""
    if not flags:
        raise ValueError("a prompt with no images has no verdict")
    n = sum(bool(f) for f in flags)
    if rule == "any":
        return n > 0
    if rule == "majority":
        return 2 * n > len(flags)
    if rule == "all":
        return n == len(flags)
    raise ValueError(f"rule {rule!r}: expected any, majority or all")


def imbalance(gen_right: dict[str, bool], und_right: dict[str, bool]) -> dict[str, Any]:
    """Shares of prompts (over the same prompt keys) in each cell of gen x und, and the imbalance sum."""
    if set(gen_right) != set(und_right):
        only = sorted(set(gen_right) ^ set(und_right))[0]
        raise ValueError(f"gen_right and und_right must cover the same prompts (e.g. {only!r} is in one only)")
    n = len(gen_right)
    cells = {"gen_right_und_wrong": 0, "und_right_gen_wrong": 0, "both_right": 0, "both_wrong": 0}
    for key, gen in gen_right.items():
        und = und_right[key]
        cell = ("both_right" if und else "gen_right_und_wrong") if gen else \
               ("und_right_gen_wrong" if und else "both_wrong")
        cells[cell] += 1
    share = {k: (v / n if n else 0.0) for k, v in cells.items()}
    return {"prompts": n, **share, "imbalance": share["gen_right_und_wrong"] + share["und_right_gen_wrong"],
            "counts": cells}


def imbalance_protocol(backbone: Any, images_dir: str | None, geneval_results: str | None,
                       gen_rule: Rule = "majority", und_rule: Rule = "majority", batch_size: int = 32,
                       max_new_tokens: int = 32, progress: Progress = no_progress,
                       cache: dict[str, str] | None = None, store: Path | None = None) -> dict[str, Any]:
    """Answer every image of the folder (reusing `cache`), then compare per-prompt verdicts."""
    judged = judged_images(images_dir, geneval_results, "protocol imbalance")
    cache = {} if cache is None else cache
    ensure_answers(backbone, str(images_dir), judged, cache, batch_size, max_new_tokens, progress, store)
    rows = graded_rows(judged, cache)
    gen: dict[str, list[bool]] = {}
    und: dict[str, list[bool]] = {}
    for r in rows:
        gen.setdefault(r["prompt_key"], []).append(r["gen_correct"])
        und.setdefault(r["prompt_key"], []).append(r["correct"])
    gen_right = {k: aggregate(v, gen_rule) for k, v in gen.items()}
    und_right = {k: aggregate(v, und_rule) for k, v in und.items()}
    metrics = {**imbalance(gen_right, und_right), "gen_rule": gen_rule, "und_rule": und_rule,
               "gen_right_share": _share(gen_right), "und_right_share": _share(und_right)}
    prompts = {r["prompt_key"]: r["prompt"] for r in rows}
    prompt_rows = [{"prompt_key": k, "prompt": prompts[k],
                    "images": len(gen[k]), "gen_correct": sum(gen[k]), "und_correct": sum(und[k]),
                    "gen_right": gen_right[k], "und_right": und_right[k]} for k in gen]
    return {"metrics": metrics, "rows": prompt_rows}


def _share(flags: dict[str, bool]) -> float:
    return sum(flags.values()) / len(flags) if flags else 0.0
