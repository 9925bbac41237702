"""Every number the loop report compares, with its n and a 95% bootstrap interval.

A loop evaluates the same eval prompts with the same image seeds every round (`evaluate` in run.py passes
one prompts file and `eval_seed`; image k of prompt i is drawn from (seed, i, k) only), and the clean
renders of `understanding: clean` come from the same seed too, so round 0 and round r hold the same units
and their difference is paired per unit (eval/geneval/paired.py). Understanding on the images GenEval
judged correct asks about other images each round: unpaired. Units come from the per-item files the
stages write: geneval/results.jsonl, understanding/rows.jsonl, scores_summary.json's groups. A round
without them keeps its summary numbers, and their delta says it has no interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unirl_kit.eval.geneval.paired import (
    Units,
    paired_delta,
    paired_units,
    per_prompt,
    read_results,
    unit_interval,
    unpaired_units,
)
from unirl_kit.loop.report import IMBALANCE_KEYS, UND_TYPES, _get, _keys, _loads, _read, _sub

Family = tuple[str, ...]  # where the family's numbers sit in a round: ("understanding", "clean"), ...
NO_UNITS = "no per-item results: no interval"
MISSING = "not measured in both rounds"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [r for r in map(_loads, (_read(path) or "").splitlines()) if isinstance(r, dict)]


def _understanding_units(folder: Path) -> dict[Family, tuple[Units, bool]]:
    """clean renders (by position: same seed, same scenes), answered own images (by image), imbalance
    verdicts (by prompt, one pooled share each)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in _rows(folder / "understanding" / "rows.jsonl"):
        by.setdefault(str(r.get("protocol")), []).append(r)
    out: dict[Family, tuple[Units, bool]] = {}
    if by.get("clean"):
        out["understanding", "clean"] = ({f"{i:05d}": (str(r["tag"]), float(bool(r["correct"])), 1)
                                          for i, r in enumerate(by["clean"])}, False)
    if by.get("geneval_correct"):
        out["understanding", "geneval_correct"] = ({str(r["image"]): (str(r["tag"]), float(bool(r["correct"])), 1)
                                                    for r in by["geneval_correct"]}, False)
    rows = by.get("imbalance") or []
    cells = {"gen_right_und_wrong": lambda g, u: g and not u, "und_right_gen_wrong": lambda g, u: u and not g,
             "imbalance": lambda g, u: g != u}
    for key, cell in (cells.items() if rows else []):
        out["understanding", "imbalance", key] = ({str(r["prompt_key"]): (
            "all", float(cell(bool(r["gen_right"]), bool(r["und_right"]))), int(r.get("images") or 1))
            for r in rows}, True)
    return out


def _score_units(folder: Path) -> dict[Family, tuple[Units, bool]]:
    """Self-scores per prompt (scores_summary.json's groups): the total and each reward, pooled means."""
    groups = _get(_loads(_read(folder / "scores_summary.json")), "groups")
    if not isinstance(groups, list) or not groups:
        return {}
    keys = [(f"{int(g['prompt_index']):05d}", int(g["samples"])) for g in groups]

    def units(*path: str) -> tuple[Units, bool]:
        return {k: ("all", float(_get(g, *path, "mean")), n) for (k, n), g in zip(keys, groups, strict=True)}, True

    return {("scores", "total"): units("total"),
            **{("scores", "rewards", name): units("rewards", name) for name in groups[0].get("rewards") or {}}}


def read_units(folder: Path) -> dict[Family, tuple[Units, bool]]:
    """A round's per-unit values, family -> (units, pooled); a family whose file is absent is left out."""
    out: dict[Family, tuple[Units, bool]] = {}
    results = folder / "geneval" / "results.jsonl"
    if results.is_file() and (rows := read_results(results)):
        out["geneval",] = (per_prompt(rows), False)
    try:
        out.update(_understanding_units(folder))
    except (KeyError, TypeError, ValueError):  # a hand-edited rows.jsonl: as if not there
        pass
    try:
        out.update(_score_units(folder))
    except (KeyError, TypeError, ValueError):  # a hand-edited summary: as if not there
        pass
    return out


def round_intervals(units: dict[Family, tuple[Units, bool]]) -> dict[str, Any]:
    """Each score of one round with its own interval (the charts' error bars); None where no units."""
    def get(*family: str) -> dict[str, Any] | None:
        u = units.get(family)
        return None if u is None else unit_interval(u[0], pooled=u[1])

    def overall(*family: str) -> dict[str, Any] | None:
        return (get(*family) or {}).get("overall")

    names = [f[2] for f in units if f[:2] == ("scores", "rewards")]
    return {"geneval": get("geneval"),
            "understanding": {**{t: get("understanding", t) for t in UND_TYPES},
                              "imbalance": {k: overall("understanding", "imbalance", k) for k in IMBALANCE_KEYS}},
            "scores": {"total": overall("scores", "total"),
                       "rewards": {n: overall("scores", "rewards", n) for n in names}}}


def compare(before: tuple[Units, bool], after: tuple[Units, bool]) -> dict[str, Any]:
    """Paired where both rounds hold the same units with the same tags, else unpaired."""
    (b, pooled), (a, _) = before, after
    same = b.keys() == a.keys() and all(b[k][0] == a[k][0] for k in b)
    return paired_units(b, a, pooled=pooled) if same else unpaired_units(b, a, pooled=pooled)


def _plain(b: Any, a: Any) -> dict[str, Any]:
    """A delta from the summaries alone."""
    d = _sub(a, b)
    return {"delta": d, "ci": None, "prompts": None, "images": None, "note": MISSING if d is None else NO_UNITS}


def compute_delta(before: dict[str, Any], after: dict[str, Any], ub: dict[Family, tuple[Units, bool]],
                  ua: dict[Family, tuple[Units, bool]]) -> dict[str, Any]:
    """after minus before, number by number, each {delta, ci, prompts, images[, paired, before, note]}."""
    def cmp(*family: str) -> dict[str, Any]:
        return compare(ub[family], ua[family]) if family in ub and family in ua else {}

    def one(family: Family, *path: str) -> dict[str, Any]:
        return cmp(*family).get("overall") or _plain(_get(before, *path), _get(after, *path))

    def tagged(family: Family, scores: str, *path: str) -> dict[str, Any]:
        c = cmp(*family)
        tags = {t: c.get("tags", {}).get(t) or _plain(_get(before, *path, scores, t), _get(after, *path, scores, t))
                for t in _keys(before, after, *path, scores)}
        return {"overall": c.get("overall") or _plain(_get(before, *path, "overall"), _get(after, *path, "overall")),
                scores: tags}

    und = ("understanding",)
    names = _keys(before, after, "scores", "rewards")
    return {"from_round": before["round"], "to_round": after["round"],
            "geneval": tagged(("geneval",), "tags", "geneval"),
            "understanding": {t: tagged((*und, t), "accuracy", *und, t) for t in UND_TYPES},
            "imbalance": {k: one((*und, "imbalance", k), *und, "imbalance", k) for k in IMBALANCE_KEYS},
            "scores": {"total": one(("scores", "total"), "scores", "total"),
                       "rewards": {n: one(("scores", "rewards", n), "scores", "rewards", n) for n in names}}}


def held_out_delta(loop_dir: Path, before: dict, after: dict, overlap: dict | None) -> dict[str, Any] | None:
    """The paired GenEval delta on the eval prompts no training prompt shares, when some tag's training
    prompts are eval prompts (with other image seeds); None otherwise."""
    paths = [loop_dir / r["folder"] / "geneval" / "results.jsonl" for r in (before, after)]
    if overlap is None or not overlap["overlapping_tags"] or not all(p.is_file() for p in paths):
        return None
    b, a = (read_results(p) for p in paths)
    return paired_delta(b, a, keep=set(overlap["held_out_folders"]))
