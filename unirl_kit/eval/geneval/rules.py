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


def evaluate(spec: PromptSpec, kept: dict[str, list[Detection]], classify_colors: ColorFn,
             opts: RuleOptions) -> Verdict:
    """The per-image verdict; `classify_colors(found, cls)` is called only when a colour is asked."""
    correct = True
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in spec.include:
        matched = True
        found = kept.get(req.cls, [])[: req.count]
        if len(found) < req.count:
            correct = matched = False
            reasons.append(f"expected {req.cls}>={req.count}, found {len(found)}")
        else:
            if req.color is not None:
                colors = classify_colors(found, req.cls)
                if colors.count(req.color) < req.count:
                    correct = matched = False
                    reasons.append(
                        f"expected {req.color} {req.cls}>={req.count}, found "
                        f"{colors.count(req.color)} {req.color}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in GENEVAL_COLORS if c in colors)
                    )
            if req.position is not None and matched:
                relation, target = req.position
                if groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {req.cls} to be {relation}")
                else:
                    for obj in found:
                        for ref in groups[target]:
                            rels = relative_position(obj.box, ref.box, opts.position_threshold)
                            if relation not in rels:
                                correct = matched = False
                                reasons.append(
                                    f"expected {req.cls} {relation} target, found "
                                    f"{' and '.join(sorted(rels))} target"
                                )
                                break
                        if not matched:
                            break
        groups.append(found if matched else None)
    for req in spec.exclude:
        n = len(kept.get(req.cls, []))
        if n >= req.count:
            correct = False
            reasons.append(f"expected {req.cls}<{req.count}, found {n}")
    details = {cls: [d.box5() for d in dets] for cls, dets in kept.items()}
    return Verdict(correct, "\n".join(reasons), details)
