"""Paired GenEval differences with their sample size and a 95% bootstrap interval.

Two evaluations of the same prompts with the same image seeds (a loop's round 0 and round r, or a
reproduction arm and its seed's baseline) differ by the training and by re-sampled images. Per prompt
the difference of its images' mean verdicts is the paired unit; the overall score is GenEval's
unweighted mean of the tags, so the bootstrap resamples prompts within each tag and recombines the
tag means the same way. The same bootstrap serves any per-unit scores (`Units`: a loop's clean-render
answers, imbalance verdicts, self-scores): paired where both sides hold the same units, unpaired where
they cannot (`unpaired_units`), and one side alone for a score's own interval (`unit_interval`).
Pure functions over rows: no I/O but `read_results`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unirl_kit.jsonl import iter_lines, parse_json
from unirl_kit.types import InputError

Units = Mapping[str, tuple[str, float, int]]  # unit key -> (tag, value, images); a unit: a prompt, a render
# Fewer units than this in a group and there is no interval: a percentile bootstrap of 1-3 values returns
# about their range (each resample is all one value with probability >= 1/27), not a 95% interval.
MIN_UNITS = 4
TOO_FEW = f"no interval: n < {MIN_UNITS}"


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
    return paired_units(per_prompt(before), per_prompt(after), boots, seed, keep)


def _groups(keys: Iterable[str], units: Units, pooled: bool) -> dict[str, list[str]]:
    """tag -> unit keys (tags sorted); pooled: one group, for a metric that is a plain mean over units."""
    by_tag: dict[str, list[str]] = defaultdict(list)
    for k in sorted(keys):
        by_tag["all" if pooled else units[k][0]].append(k)
    return dict(sorted(by_tag.items()))


def _prompts(keys: Iterable[str]) -> int:
    """Distinct prompts among unit keys: a per-image key is 'PROMPT/samples/IMAGE'."""
    return len({k.split("/")[0] for k in keys})


def _images(keys: Iterable[str], units: Units) -> int:
    return sum(units[k][2] for k in keys)


def paired_units(before: Units, after: Units, boots: int = 2000, seed: int = 0, keep: set[str] | None = None,
                 pooled: bool = False) -> dict[str, Any]:
    """`paired_delta` over any units both sides hold with the same tag (a prompt, a clean render): the
    per-unit differences are bootstrapped within their tag. `pooled`: the metric is one mean over all units
    (imbalance shares, self-score means), so there is one group and no per-tag entries."""
    common = [k for k in before.keys() & after.keys()
              if (keep is None or k in keep) and before[k][0] == after[k][0]]
    groups = _groups(common, before, pooled)
    diffs = {t: np.array([after[k][1] - before[k][1] for k in keys]) for t, keys in groups.items()}
    per_tag, overall = tag_bootstrap(diffs, boots, seed)
    out: dict[str, Any] = {"tags": {} if pooled else {
        t: {**_entry(float(d.mean()), per_tag[t], _prompts(groups[t]), _images(groups[t], after), len(d)),
            "paired": True} for t, d in diffs.items()}}
    total = float(np.mean([d.mean() for d in diffs.values()])) if diffs else None
    smallest = min((len(d) for d in diffs.values()), default=0)
    out["overall"] = {**_entry(total, overall if diffs else None, _prompts(common), _images(common, after), smallest),
                      "paired": True}
    return out


def unpaired_units(before: Units, after: Units, boots: int = 2000, seed: int = 0,
                   pooled: bool = False) -> dict[str, Any]:
    """after - before when the two sides hold different units (understanding asked only about the images
    GenEval judged correct, which differ by round): each side resampled on its own, the draws subtracted.
    A tag on one side only has no delta; the overall compares each side's own mean of its tag means."""
    gb, ga = _groups(before, before, pooled), _groups(after, after, pooled)
    vb = {t: np.array([before[k][1] for k in keys]) for t, keys in gb.items()}
    va = {t: np.array([after[k][1] for k in keys]) for t, keys in ga.items()}
    (tb, ob), (ta, oa) = tag_bootstrap(vb, boots, seed), tag_bootstrap(va, boots, seed + 1)

    def entry(diff: float | None, draws: np.ndarray | None, kb: list[str], ka: list[str], smallest: int) -> dict:
        e = _entry(diff, draws, _prompts(ka), _images(ka, after), smallest)
        return {**e, "paired": False, "before": {"prompts": _prompts(kb), "images": _images(kb, before)}}

    tags = {} if pooled else {t: entry(float(va[t].mean() - vb[t].mean()), ta[t] - tb[t], gb[t], ga[t],
                                       min(len(vb[t]), len(va[t]))) for t in ga if t in gb}
    both = bool(vb) and bool(va)
    total = float(np.mean([v.mean() for v in va.values()]) - np.mean([v.mean() for v in vb.values()])) if both else None
    smallest = min((len(v) for v in (*vb.values(), *va.values())), default=0)
    return {"tags": tags, "overall": entry(total, oa - ob if both else None, sorted(before), sorted(after), smallest)}


def unit_interval(units: Units, boots: int = 2000, seed: int = 0, pooled: bool = False) -> dict[str, Any]:
    """One round's scores with their own 95% bootstrap intervals (units resampled within their tag), for
    error bars: {tags: {tag: {value, ci, prompts, images}}, overall: {...}}."""
    groups = _groups(units, units, pooled)
    values = {t: np.array([units[k][1] for k in keys]) for t, keys in groups.items()}
    per_tag, overall = tag_bootstrap(values, boots, seed)
    tags = {} if pooled else {t: _entry(float(v.mean()), per_tag[t], _prompts(groups[t]), _images(groups[t], units),
                                        len(v), "value") for t, v in values.items()}
    total = float(np.mean([v.mean() for v in values.values()])) if values else None
    smallest = min((len(v) for v in values.values()), default=0)
    return {"tags": tags, "overall": _entry(total, overall if values else None, _prompts(units),
                                            _images(units, units), smallest, "value")}


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
    return [round(float(np.percentile(draws, q)), 6) + 0.0 for q in (2.5, 97.5)]  # + 0.0: no -0.0


def _entry(value: float | None, boot: np.ndarray | None, prompts: int, images: int, smallest: int,
           key: str = "delta") -> dict[str, Any]:
    """A number with its n and interval; under MIN_UNITS units in a group, a note instead of an interval."""
    out: dict[str, Any] = {key: None if value is None else round(value, 6) + 0.0, "ci": None,
                           "prompts": prompts, "images": images}
    if boot is not None and smallest >= MIN_UNITS:
        out["ci"] = interval(boot)
    elif value is not None:
        out["note"] = TOO_FEW
    return out


def excludes_zero(entry: Mapping[str, Any]) -> int:
    """+1 when the interval lies above 0, -1 below, 0 when it holds 0 or there is none."""
    ci = entry.get("ci")
    return 0 if not ci else 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def delta_text(entry: Mapping[str, Any], key: str = "delta") -> str:
    """'+0.120 [+0.080, +0.160]', or why there is no interval."""
    value = entry.get(key)
    if value is None:
        return "–"
    if entry.get("ci") is None:
        return f"{value:+.3f} ({entry.get('note') or TOO_FEW})"
    lo, hi = entry["ci"]
    return f"{value:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def n_text(entry: Mapping[str, Any]) -> str:
    """'300 / 1200' (prompts / images); unpaired: before → after."""
    if entry.get("prompts") is None:
        return "–"
    n = f"{entry['prompts']} / {entry['images']}"
    before = entry.get("before")
    return f"{before['prompts']} / {before['images']} → {n} (unpaired)" if before else n


def describe(entry: Mapping[str, Any]) -> str:
    """'+0.120 [+0.080, +0.160], n = 300 prompts / 1200 images' (unpaired: 'n = 40 → 52 prompts / ...')."""
    if entry.get("delta") is None or entry.get("prompts") is None:
        return delta_text(entry)
    b = entry.get("before")
    prompts, images = (f"{b['prompts']} → {entry['prompts']}", f"{b['images']} → {entry['images']}") if b else \
        (entry["prompts"], entry["images"])
    return f"{delta_text(entry)}{', unpaired' if b else ''}, n = {prompts} prompts / {images} images"
