"""Paired GenEval differences with their sample size and a 95% bootstrap interval.

Two evaluations of the same prompts with the same image seeds (a loop's round 0 and round r, or a
reproduction arm and its seed's baseline) differ by the training and by re-sampled images. Per prompt
the difference of its images' mean verdicts is the paired unit; the overall score is GenEval's
unweighted mean of the tags, so the bootstrap resamples prompts within each tag and recombines the
tag means the same way. Pure functions over `results.jsonl` rows: no I/O but `read_results`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unirl_kit.jsonl import iter_lines, parse_json
from unirl_kit.types import InputError


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a `results.jsonl` (torn or blank lines skipped)."""
    rows = []
    for _, line in iter_lines(Path(path)):
        try:
            row = parse_json(line, str(path))
        except InputError:
            continue
        if isinstance(row, dict) and "tag" in row and "correct" in row:
            rows.append(row)
    return rows


def _prompt_key(row: Mapping[str, Any]) -> str:
    """The image's prompt folder (GenEval layout: .../00012/samples/0003.png -> 00012)."""
    parts = Path(str(row.get("filename", ""))).parts
    return parts[-3] if len(parts) >= 3 else str(row.get("prompt"))


def per_prompt(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[str, float, int]]:
    """prompt folder -> (tag, mean verdict of its images, images)."""
    acc: dict[str, list] = defaultdict(lambda: ["", 0.0, 0])
    for r in rows:
        a = acc[_prompt_key(r)]
        a[0], a[1], a[2] = r["tag"], a[1] + float(bool(r["correct"])), a[2] + 1
    return {k: (t, s / n, n) for k, (t, s, n) in acc.items()}


def paired_delta(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], boots: int = 2000,
                 seed: int = 0, keep: set[str] | None = None) -> dict[str, Any]:
    """after - before on the prompts both hold (optionally only those in `keep`): overall and per tag, each
    {delta, ci: [lo, hi], prompts, images}; the interval is the 2.5/97.5 percentiles of the bootstrap."""
    b, a = per_prompt(before), per_prompt(after)
    common = sorted(k for k in b.keys() & a.keys() if keep is None or k in keep)
    by_tag: dict[str, list[str]] = defaultdict(list)
    for k in common:
        by_tag[b[k][0]].append(k)
    diffs = {t: np.array([a[k][1] - b[k][1] for k in keys]) for t, keys in sorted(by_tag.items())}
    per_tag, overall = tag_bootstrap(diffs, boots, seed)
    out: dict[str, Any] = {"tags": {t: _entry(float(d.mean()), per_tag[t], len(d), sum(a[k][2] for k in by_tag[t]))
                                    for t, d in diffs.items()}}
    total = float(np.mean([d.mean() for d in diffs.values()])) if diffs else None
    out["overall"] = _entry(total, overall if diffs else None, len(common), sum(a[k][2] for k in common))
    return out


def tag_bootstrap(values: Mapping[str, np.ndarray], boots: int = 2000, seed: int = 0
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Bootstrap draws of each tag's mean of per-prompt `values` (prompts resampled within their tag) and of
    GenEval's overall, the unweighted mean of the tag means."""
    rng = np.random.default_rng(seed)
    per_tag = {t: v[rng.integers(0, len(v), size=(boots, len(v)))].mean(axis=1) for t, v in values.items()}
    overall = np.mean(list(per_tag.values()), axis=0) if per_tag else np.zeros(boots)
    return per_tag, overall


def interval(draws: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap draws."""
    return [round(float(np.percentile(draws, 2.5)), 6), round(float(np.percentile(draws, 97.5)), 6)]


def _entry(delta: float | None, boot: np.ndarray | None, prompts: int, images: int) -> dict[str, Any]:
    ci = None if boot is None else interval(boot)
    return {"delta": None if delta is None else round(delta, 6) + 0.0, "ci": ci, "prompts": prompts, "images": images}


def describe(entry: Mapping[str, Any]) -> str:
    """'+0.120 [+0.080, +0.160], n = 300 prompts / 1200 images'."""
    if entry.get("delta") is None:
        return "–"
    lo, hi = entry["ci"]
    return f"{entry['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}], n = {entry['prompts']} prompts / {entry['images']} images"
