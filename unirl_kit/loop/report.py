"""The report of a `unirl loop` folder: what each round scored, how training went, what changed.

Read only from what the stages leave in round-NNN/ (geneval/summary.json and results.jsonl,
understanding/summary.json and rows.jsonl, scores_summary.json, train*/metrics.jsonl), so it can be
rebuilt any time, mid-loop too: a piece not there is null, never an error. Before = round 0 (untrained),
after = the last round with eval.done.json; every delta carries its n and a 95% bootstrap interval
(intervals.py). No dates or absolute paths go in, so a rerun gives byte-identical report.json and
report.md. The markdown and terminal tables are in markdown.py, the pictures in figures.py and sheets.py.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from unirl_kit.jsonl import write_atomic

ROUND = re.compile(r"^round-(\d+)$")
UND_TYPES = {"clean": "clean renders", "geneval_correct": "own images judged correct"}
IMBALANCE_KEYS = {"gen_right_und_wrong": "gen right, und wrong", "und_right_gen_wrong": "und right, gen wrong",
                  "imbalance": "imbalance (sum)"}
TRAIN_DIRS = ("train_sft", "train")  # `train: both` runs SFT (train_sft/) before GRPO (train/)
Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows


def _get(d: Any, *keys: str) -> Any:
    for k in keys:  # d[k1][k2]...; None once a level is missing or no dict (hand-edited files too)
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):  # absent, or not UTF-8: as if not there yet
        return None


def _loads(text: str | None, parse: Any = json.loads) -> Any:
    """Parsed text, or None when absent or unparsable (a torn line, a file mid-write by hand)."""
    try:
        return None if text is None else parse(text)
    except Exception:  # json's ValueError, yaml's YAMLError: either way not there yet
        return None


def _json(path: Path) -> Any:
    return _loads(_read(path))


def _yaml(path: Path) -> dict[str, Any]:
    """A run's config.yaml (write_run_info), or {}."""
    import yaml

    data = _loads(_read(path), yaml.safe_load)
    return data if isinstance(data, dict) else {}


def _num(value: Any) -> float | None:
    """A finite number (rounded: no float noise in deltas), else None (JSON has no NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value if isinstance(value, int) else round(float(value), 6) + 0.0  # + 0.0: no -0.0


def _each(d: Any, *keys: str) -> dict[str, float | None]:
    """{name: d[name][keys...]} as numbers, {} when d is not a dict."""
    return {str(k): _num(_get(v, *keys) if keys else v) for k, v in d.items()} if isinstance(d, dict) else {}


def _geneval(folder: Path) -> dict[str, Any] | None:
    s = _json(folder / "geneval" / "summary.json")
    if not isinstance(_get(s, "tags"), dict):
        return None
    return {"overall": _num(s.get("overall")), "tags": _each(s["tags"], "score"),
            "images": s.get("total_images"), "prompts": s.get("total_prompts")}


def _understanding(folder: Path) -> dict[str, Any] | None:
    """Per protocol: accuracy per question type (clean, geneval_correct), shares (imbalance), scalars (others)."""
    protocols = _get(_json(folder / "understanding" / "summary.json"), "protocols")
    if not isinstance(protocols, dict):
        return None
    out: dict[str, Any] = {name: None for name in (*UND_TYPES, "imbalance")}
    for name, m in ((n, m) for n, m in protocols.items() if isinstance(m, dict)):
        if name in UND_TYPES:
            out[name] = {"overall": _num(m.get("overall")), "accuracy": _each(m.get("accuracy"))}
        elif name == "imbalance":
            out[name] = {k: _num(m.get(k)) for k in (*IMBALANCE_KEYS, "gen_right_share", "und_right_share")}
            out[name]["prompts"] = m.get("prompts")
        else:
            out[name] = {k: v for k, v in _each(m).items() if v is not None}
    return out


def _scores(folder: Path) -> dict[str, Any] | None:
    s = _json(folder / "scores_summary.json")
    if not isinstance(_get(s, "overall"), dict):
        return None
    return {"total": _num(_get(s, "overall", "total", "mean")),
            "zero_std_share": _num(_get(s, "overall", "total", "zero_std_share")),
            "rewards": _each(_get(s, "overall", "rewards"), "mean"), "tags": _each(s.get("tags"), "total", "mean")}


def _phase(train_dir: Path) -> dict[str, Any] | None:
    """One trainer's metrics.jsonl as columns: steps and every numeric key (torn lines skipped)."""
    text = _read(train_dir / "metrics.jsonl")
    if text is None:
        return None
    rows = sorted((r for r in map(_loads, text.splitlines()) if isinstance(_get(r, "step"), int)),
                  key=lambda r: r["step"])
    keys = list(dict.fromkeys(k for r in rows for k, v in r.items() if k != "step" and _num(v) is not None))
    config = _yaml(train_dir / "config.yaml")
    command = str(config.get("command", ""))  # "train grpo" / "train sft"
    kind = command.removeprefix("train ") if command.startswith("train ") else train_dir.name
    prompts = config.get("prompts_per_step")  # the n of the reward curve's band (figures.py)
    return {"phase": kind, "folder": train_dir.name, "steps": [r["step"] for r in rows],
            "prompts_per_step": prompts if isinstance(prompts, int) and not isinstance(prompts, bool) else None,
            "metrics": {k: [_num(r.get(k)) for r in rows] for k in keys}}


def _step_seconds(phases: list[dict[str, Any]]) -> float | None:
    """Seconds inside training steps (every `time/*` column of every phase). Unlike `train_seconds` (the
    stage's wall clock, model loading and export included, this run's share only), it counts each step
    once across a kill and resume."""
    times = [v for p in phases for k, col in p["metrics"].items() if k.startswith("time/") for v in col if v is not None]
    return round(sum(times), 3) if phases else None


def read_round(index: int, folder: Path) -> dict[str, Any]:
    """One round folder; every piece not (yet) on disk is None. `intervals`: each score's own 95% interval
    (the charts' error bars); `contact_sheet` is set when the report draws it."""
    from unirl_kit.loop.intervals import read_units, round_intervals

    phases = [p for d in TRAIN_DIRS if (p := _phase(folder / d)) is not None]
    train_done = _json(folder / "train.done.json")
    return {"round": index, "folder": folder.name, "evaluated": (folder / "eval.done.json").is_file(),
            "trained": isinstance(train_done, dict), "train_seconds": _num(_get(train_done, "seconds")),
            "step_seconds": _step_seconds(phases), "geneval": _geneval(folder), "understanding": _understanding(folder),
            "scores": _scores(folder), "intervals": round_intervals(read_units(folder)), "training": phases or None,
            "contact_sheet": None}


def _sub(after: Any, before: Any) -> float | None:
    return None if after is None or before is None else round(after - before, 6) + 0.0


def _keys(before: dict, after: dict, *path: str) -> list[str]:
    """The keys under `path` in either round, before's order first."""
    return list(dict.fromkeys([*(_get(before, *path) or {}), *(_get(after, *path) or {})]))


def _prompt_file(path: Path) -> list[dict[str, Any]]:
    rows = [_loads(line) for line in (_read(path) or "").splitlines()]
    return [r for r in rows if isinstance(r, dict) and "prompt" in r]


def prompt_overlap(loop_dir: Path) -> dict[str, Any] | None:
    """Which tags' training prompts are eval prompts too (a tag whose prompt space the eval set exhausts
    trains on them with other image seeds), and the eval prompt folders that no training prompt shares."""
    train, evals = _prompt_file(loop_dir / "prompts" / "train.jsonl"), _prompt_file(loop_dir / "prompts" / "eval.jsonl")
    if not train or not evals:
        return None
    trained = {r["prompt"] for r in train}
    shared = sorted({r.get("tag") for r in evals if r["prompt"] in trained})
    held = [f"{i:05d}" for i, r in enumerate(evals) if r["prompt"] not in trained]
    return {"overlapping_tags": shared, "held_out_folders": held, "held_out_prompts": len(held),
            "eval_prompts": len(evals)}


def build_report(loop_dir: Path) -> dict[str, Any]:
    """Everything the report says, as a JSON-ready dict (figures not drawn yet)."""
    from unirl_kit.loop.intervals import compute_delta, held_out_delta, read_units

    loop_dir = Path(loop_dir)
    folders = [(int(m.group(1)), p) for p in (loop_dir.iterdir() if loop_dir.is_dir() else [])
               if p.is_dir() and (m := ROUND.match(p.name))]
    rounds = [read_round(i, p) for i, p in sorted(folders)]
    offset = 0  # global step: each phase continues where the previous one ended
    for r in rounds:
        for ph in r["training"] or []:
            ph["global_offset"] = offset
            offset += max(ph["steps"], default=0)
    config = _yaml(loop_dir / "config.yaml")
    base = next((r for r in rounds if r["round"] == 0), None)
    last = next((r for r in reversed(rounds) if r["evaluated"] and r["round"] > 0), None)
    overlap = prompt_overlap(loop_dir)
    delta = held = None
    if base is not None and last is not None:
        delta = compute_delta(base, last, *(read_units(loop_dir / r["folder"]) for r in (base, last)))
        held = held_out_delta(loop_dir, base, last, overlap)
    return {"loop": loop_dir.name, "planned_rounds": config.get("rounds"), "train_mode": config.get("train"),
            "baseline_round": 0 if base is not None else None, "last_round": last["round"] if last else None,
            "rounds": rounds, "delta": delta, "held_out": held, "prompt_overlap": overlap, "figures": {}}


def print_report(report: dict[str, Any]) -> None:
    """The before/after tables and the change sentences, in the terminal (markdown.py)."""
    from unirl_kit.loop.markdown import print_report as show

    show(report)


def write_report(loop_dir: Path) -> dict[str, Any]:
    """report.json, report.md, figures/*.png and each evaluated round's contact_sheet.png; returns the
    report dict."""
    from unirl_kit.loop.figures import draw
    from unirl_kit.loop.markdown import to_markdown
    from unirl_kit.loop.sheets import contact_sheets

    report = build_report(loop_dir := Path(loop_dir))
    report["figures"] = draw(report, loop_dir)
    sheets = contact_sheets(report, loop_dir)
    for r in report["rounds"]:
        r["contact_sheet"] = sheets.get(r["round"])
    write_atomic(loop_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(loop_dir / "report.md", to_markdown(report))
    return report
