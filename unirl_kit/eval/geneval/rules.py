"""GenEval's rules as pure functions (no I/O, no models), shared by `eval geneval` and rewards.

Follows the reference `evaluate_images.py` step by step; every constant is a field of `RuleOptions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from unirl_kit.types import GENEVAL_COLORS, Detection, PromptSpec, Verdict


@dataclass
class RuleOptions:
    threshold: float = 0.3  # keep score > threshold (strict)
    counting_threshold: float = 0.9  # used for every class when the tag is `counting`
    max_objects: int = 16  # per class, after sorting by score
    max_overlap: float = 1.0  # NMS IoU; 1.0 turns NMS off, as in the reference
    position_threshold: float = 0.1  # c in the relative-position rule


def relative_position(box_a: Sequence[float], box_b: Sequence[float], c: float = 0.1) -> set[str]:
    """Relations of A relative to B (image y grows downward); several may hold, or none."""
    ca = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    cb = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    size_a = (abs(box_a[2] - box_a[0]), abs(box_a[3] - box_a[1]))
    size_b = (abs(box_b[2] - box_b[0]), abs(box_b[3] - box_b[1]))
    off = [ca[i] - cb[i] for i in range(2)]
    rev = [max(abs(off[i]) - c * (size_a[i] + size_b[i]), 0.0) * _sign(off[i]) for i in range(2)]
    if all(abs(r) < 1e-3 for r in rev):
        return set()
    norm = math.hypot(off[0], off[1])
    dx, dy = rev[0] / norm, rev[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _sign(v: float) -> float:
    return (v > 0) - (v < 0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """The reference's IoU, with its +1 pixel area convention."""
    def area(x1: float, y1: float, x2: float, y2: float) -> float:
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)

    inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    union = area(*a[:4]) + area(*b[:4]) - inter
    return inter / union if union else 0.0


def keep_detections(
    detections: Iterable[Detection], tag: str, opts: RuleOptions
) -> dict[str, list[Detection]]:
    """Per class: strict score threshold, sort descending, cap at max_objects, optional NMS."""
    threshold = opts.counting_threshold if tag == "counting" else opts.threshold
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        by_class.setdefault(det.cls, []).append(det)
    kept: dict[str, list[Detection]] = {}
    for cls, dets in by_class.items():
        # the reference's own call, so ties fall in the same order (later detection first for <= 16)
        order = np.argsort(np.array([d.score for d in dets], dtype=np.float64))[::-1]
        ordering = [dets[i] for i in order if dets[i].score > threshold][: opts.max_objects]
        chosen: list[Detection] = []
        while ordering:
            best = ordering.pop(0)
            chosen.append(best)
            if opts.max_overlap != 1:
                ordering = [d for d in ordering if box_iou(best.box, d.box) < opts.max_overlap]
        if chosen:
            kept[cls] = chosen
    return kept


ColorFn = Callable[[list[Detection], str], list[str]]


@dataclass(frozen=True)
class Check:
    """One requirement's outcome; kept apart so partial-credit rewards count what the verdict ANDs."""

    kind: str  # "include" or "exclude"
    index: int  # position in spec.include / spec.exclude
    passed: bool
    reason: str = ""  # why it failed (the reference's wording), "" when it passed


def requirement_checks(spec: PromptSpec, kept: dict[str, list[Detection]], classify_colors: ColorFn,
                       opts: RuleOptions) -> list[Check]:
    """Every include requirement (count, then colour, then position) and every exclude, in order."""
    checks: list[Check] = []
    groups: list[list[Detection] | None] = []  # the objects that matched each include, for positions
    for i, req in enumerate(spec.include):
        found = kept.get(req.cls, [])[: req.count]
        reason = ""
        if len(found) < req.count:
            reason = f"expected {req.cls}>={req.count}, found {len(found)}"
        else:
            if req.color is not None:
                colors = classify_colors(found, req.cls)
                if colors.count(req.color) < req.count:
                    reason = (f"expected {req.color} {req.cls}>={req.count}, found "
                              f"{colors.count(req.color)} {req.color}; and "
                              + ", ".join(f"{colors.count(c)} {c}" for c in GENEVAL_COLORS if c in colors))
            if req.position is not None and not reason:
                relation, target = req.position
                targets = groups[target]
                if targets is None:
                    reason = f"no target for {req.cls} to be {relation}"
                else:
                    reason = _position_failure(found, targets, req.cls, relation, opts)
        groups.append(None if reason else found)
        checks.append(Check("include", i, not reason, reason))
    for i, req in enumerate(spec.exclude):
        n = len(kept.get(req.cls, []))
        reason = f"expected {req.cls}<{req.count}, found {n}" if n >= req.count else ""
        checks.append(Check("exclude", i, not reason, reason))
    return checks


def _position_failure(found: list[Detection], targets: list[Detection], cls: str, relation: str,
                      opts: RuleOptions) -> str:
    """The first object/target pair not in `relation` (every pair must be), as the reference words it."""
    for obj in found:
        for ref in targets:
            rels = relative_position(obj.box, ref.box, opts.position_threshold)
            if relation not in rels:
                return f"expected {cls} {relation} target, found {' and '.join(sorted(rels))} target"
    return ""


def verdict_from_checks(checks: Sequence[Check], kept: dict[str, list[Detection]]) -> Verdict:
    """Correct only when every check passes; the failures' reasons, one a line."""
    details = {cls: [d.box5() for d in dets] for cls, dets in kept.items()}
    return Verdict(all(c.passed for c in checks), "\n".join(c.reason for c in checks if not c.passed), details)


def evaluate(spec: PromptSpec, kept: dict[str, list[Detection]], classify_colors: ColorFn,
             opts: RuleOptions) -> Verdict:
    """The per-image verdict; `classify_colors(found, cls)` is called only when a colour is asked."""
    return verdict_from_checks(requirement_checks(spec, kept, classify_colors, opts), kept)
