"""POPE-style object existence: "Is there a {object} in the image?" for present and absent objects.

As POPE (Li et al., 2023) builds it: per image, one question for each object present (truth "yes")
and as many absent objects (truth "no"), chosen by a strategy:
  random      uniformly among the absent classes of the vocabulary;
  popular     the absent classes most frequent over the whole image set (ties: vocabulary order);
  adversarial the absent classes that most often co-occur with the image's present ones.
The truth comes from clean renders (the drawn objects) or, for generated images, from GenEval's kept
detections. The answer's first "yes"/"no" word is the prediction; anything else is unparsed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from unirl_kit.prompts.answers import normalize
from unirl_kit.prompts.language import with_article

Strategy = Literal["random", "popular", "adversarial"]
STRATEGIES: tuple[str, ...] = ("random", "popular", "adversarial")


def pope_question(cls: str) -> str:
    return f"Is there {with_article(cls)} in the image?"


def parse_yes_no(text: str) -> bool | None:
    """The first 'yes' or 'no' word of the answer; None when it has neither."""
    for word in normalize(text).split():
        if word == "yes":
            return True
        if word == "no":
            return False
    return None


def pope_metrics(truth: Sequence[bool], predicted: Sequence[bool | None]) -> dict[str, Any]:
    """POPE's numbers with "yes" as the positive class.

    An unparsed answer (None) is wrong for accuracy, a miss for recall (recall's denominator is every
    true "yes"), and not a "yes" for precision and the yes-ratio; its share is reported on its own.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths for {len(predicted)} predictions")
    tp = sum(t and p is True for t, p in zip(truth, predicted, strict=True))
    fp = sum(not t and p is True for t, p in zip(truth, predicted, strict=True))
    tn = sum(not t and p is False for t, p in zip(truth, predicted, strict=True))
    fn = sum(t and p is False for t, p in zip(truth, predicted, strict=True))
    unparsed = sum(p is None for p in predicted)
    n, positives = len(truth), sum(bool(t) for t in truth)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "unparsed": unparsed / n if n else 0.0,
        "counts": {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "unparsed": unparsed, "questions": n},
    }


def choose_negatives(present: Sequence[set[str]], vocabulary: Sequence[str], strategy: Strategy,
                     rng: np.random.Generator) -> list[list[str]]:
    """Per image, as many absent classes as present ones (fewer when the vocabulary runs out)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    order = {c: i for i, c in enumerate(vocabulary)}
    freq = Counter(c for objs in present for c in objs)
    cooc: Counter = Counter((a, b) for objs in present for a in objs for b in objs if a != b)
    out = []
    for objs in present:
        absent = [c for c in vocabulary if c not in objs]
        k = min(len(objs), len(absent))
        if strategy == "random":
            picked = [absent[i] for i in sorted(rng.choice(len(absent), size=k, replace=False))] if k else []
        elif strategy == "popular":
            picked = sorted(absent, key=lambda c: (-freq[c], order[c]))[:k]
        else:
            picked = sorted(absent, key=lambda c: (-sum(cooc[(p, c)] for p in objs), -freq[c], order[c]))[:k]
        out.append(picked)
    return out


def pope_items(present: Sequence[set[str]], vocabulary: Sequence[str], strategy: Strategy,
               seed: int) -> list[tuple[int, str, bool]]:
    """(image index, class, truth) for every question: the present classes, then the chosen absent ones."""
    unknown = sorted({c for objs in present for c in objs} - set(vocabulary))
    if unknown:
        raise ValueError(f"class {unknown[0]!r} is present but not in the vocabulary")
    negatives = choose_negatives(present, vocabulary, strategy, np.random.default_rng([seed, 59]))
    items = []
    for i, (objs, neg) in enumerate(zip(present, negatives, strict=True)):
        items += [(i, c, True) for c in vocabulary if c in objs]
        items += [(i, c, False) for c in neg]
    return items


def run_pope(answer: Any, images: Sequence[Any], image_ids: Sequence[str], present: Sequence[set[str]],
             vocabulary: Sequence[str], strategy: Strategy, seed: int) -> dict[str, Any]:
    """Ask every question through `answer(images, questions) -> answers`; metrics and one row per question."""
    items = pope_items(present, vocabulary, strategy, seed)
    answers = answer([images[i] for i, _, _ in items], [pope_question(c) for _, c, _ in items])
    rows = []
    for (i, cls, truth), text in zip(items, answers, strict=True):
        pred = parse_yes_no(text)
        rows.append({"image": image_ids[i], "object": cls, "question": pope_question(cls), "truth": truth,
                     "answer": text, "predicted": pred, "correct": pred is truth})
    metrics = pope_metrics([r["truth"] for r in rows], [r["predicted"] for r in rows])
    unparsed = list(dict.fromkeys(r["answer"] for r in rows if r["predicted"] is None))
    metrics.update(strategy=strategy, images=len(images), unparsed_examples=unparsed[:5])
    return {"metrics": metrics, "rows": rows}
