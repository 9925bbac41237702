"""The report of a `unirl loop` folder: what each round scored, how training went, what changed.

Read only from what the stages leave in round-NNN/ (geneval/summary.json, understanding/summary.json,
scores_summary.json, train*/metrics.jsonl), so it can be rebuilt any time, mid-loop too: a piece not there
is null, never an error. Before = round 0 (untrained), after = the last round with eval.done.json. No dates
or absolute paths go in, so a rerun gives byte-identical report.json and report.md.
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
    command = str(_yaml(train_dir / "config.yaml").get("command", ""))  # "train grpo" / "train sft"
    kind = command.removeprefix("train ") if command.startswith("train ") else train_dir.name
    return {"phase": kind, "folder": train_dir.name, "steps": [r["step"] for r in rows],
            "metrics": {k: [_num(r.get(k)) for r in rows] for k in keys}}


def _step_seconds(phases: list[dict[str, Any]]) -> float | None:
    """Seconds inside training steps (every `time/*` column of every phase). Unlike `train_seconds` (the
    stage's wall clock, model loading and export included, this run's share only), it counts each step
    once across a kill and resume."""
    times = [v for p in phases for k, col in p["metrics"].items() if k.startswith("time/") for v in col if v is not None]
    return round(sum(times), 3) if phases else None


def read_round(index: int, folder: Path) -> dict[str, Any]:
    """One round folder; every piece not (yet) on disk is None."""
    phases = [p for d in TRAIN_DIRS if (p := _phase(folder / d)) is not None]
    train_done = _json(folder / "train.done.json")
    return {"round": index, "folder": folder.name, "evaluated": (folder / "eval.done.json").is_file(),
            "trained": isinstance(train_done, dict), "train_seconds": _num(_get(train_done, "seconds")),
            "step_seconds": _step_seconds(phases), "geneval": _geneval(folder), "understanding": _understanding(folder), "scores": _scores(folder),
            "training": phases or None}


def _sub(after: Any, before: Any) -> float | None:
    return None if after is None or before is None else round(after - before, 6) + 0.0


def _keys(before: dict, after: dict, *path: str) -> list[str]:
    """The keys under `path` in either round, before's order first."""
    return list(dict.fromkeys([*(_get(before, *path) or {}), *(_get(after, *path) or {})]))


def compute_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after minus before, key by key; null where either side has no value."""
    def d(*keys: str) -> float | None:
        return _sub(_get(after, *keys), _get(before, *keys))

    def each(*keys: str) -> dict[str, float | None]:
        return {k: d(*keys, k) for k in _keys(before, after, *keys)}

    return {"from_round": before["round"], "to_round": after["round"],
            "geneval": {"overall": d("geneval", "overall"), "tags": each("geneval", "tags")},
            "understanding": {t: {"overall": d("understanding", t, "overall"),
                                  "accuracy": each("understanding", t, "accuracy")} for t in UND_TYPES},
            "imbalance": {k: d("understanding", "imbalance", k) for k in IMBALANCE_KEYS},
            "scores": {"total": d("scores", "total"), "rewards": each("scores", "rewards")}}


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


def paired_geneval(loop_dir: Path, before: dict, after: dict, overlap: dict | None) -> dict[str, Any] | None:
    """GenEval after - before per prompt (same prompts, same image seeds), with n and a 95% bootstrap
    interval, on all eval prompts and on the held-out ones only (eval/geneval/paired.py)."""
    from unirl_kit.eval.geneval.paired import paired_delta, read_results

    paths = [loop_dir / r["folder"] / "geneval" / "results.jsonl" for r in (before, after)]
    if not all(p.is_file() for p in paths):
        return None
    b, a = (read_results(p) for p in paths)
    out = {"all": paired_delta(b, a)}
    if overlap is not None and overlap["overlapping_tags"]:
        out["held_out"] = paired_delta(b, a, keep=set(overlap["held_out_folders"]))
    return out


def build_report(loop_dir: Path) -> dict[str, Any]:
    """Everything the report says, as a JSON-ready dict (figures not drawn yet)."""
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
    paired = paired_geneval(loop_dir, base, last, overlap) if base is not None and last is not None else None
    return {"loop": loop_dir.name, "planned_rounds": config.get("rounds"), "train_mode": config.get("train"),
            "baseline_round": 0 if base is not None else None, "last_round": last["round"] if last else None,
            "rounds": rounds, "delta": compute_delta(base, last) if base is not None and last is not None else None,
            "paired": paired, "prompt_overlap": overlap, "figures": {}}


def _f(v: Any, sign: bool = False) -> str:
    return "–" if v is None else f"{v:+.3f}" if sign else f"{v:.3f}"


def _pair(report: dict[str, Any]) -> tuple[dict, dict, str, str]:
    """(round 0, last evaluated round, their column headers); {} for a round not there."""
    rounds, last = {r["round"]: r for r in report["rounds"]}, report["last_round"]
    return rounds.get(0, {}), rounds.get(last, {}), "round 0", "last round" if last is None else f"round {last}"


def _row(label: str, before: dict, after: dict, *keys: str) -> list[str]:
    b, a = _get(before, *keys), _get(after, *keys)
    return [label, _f(b), _f(a), _f(_sub(a, b), True)]


def tables(report: dict[str, Any]) -> list[Table]:
    """Before/after tables: GenEval per tag, understanding per question type, imbalance, self-scores."""
    from unirl_kit.eval.geneval.paired import describe

    b, a, hb, ha = _pair(report)
    paired = _get(report, "paired", "all") or {}
    rows = [[*_row(t, b, a, "geneval", "tags", t), describe(_get(paired, "tags", t) or {})]
            for t in _keys(b, a, "geneval", "tags")]
    rows.append([*_row("overall", b, a, "geneval", "overall"), describe(paired.get("overall") or {})])
    out: list[Table] = [("GenEval", ["task", hb, ha, "Δ", "paired Δ [95% CI], n"], rows)]
    held = _get(report, "paired", "held_out")
    if held:
        tags = ", ".join(_get(report, "prompt_overlap", "overlapping_tags") or [])
        rows = [[t, describe(e)] for t, e in held["tags"].items()] + [["overall", describe(held["overall"])]]
        out.append((f"GenEval on held-out eval prompts only (training also drew {tags}: their prompts are eval "
                    "prompts with other image seeds)", ["task", "paired Δ [95% CI], n"], rows))
    for name, title in UND_TYPES.items():
        if _get(b, "understanding", name) or _get(a, "understanding", name):
            rows = [_row(t, b, a, "understanding", name, "accuracy", t)
                    for t in _keys(b, a, "understanding", name, "accuracy")]
            rows.append(_row("overall", b, a, "understanding", name, "overall"))
            out.append((f"Understanding accuracy: {title}", ["question type", hb, ha, "Δ"], rows))
    if _get(b, "understanding", "imbalance") or _get(a, "understanding", "imbalance"):
        rows = [_row(label, b, a, "understanding", "imbalance", k) for k, label in IMBALANCE_KEYS.items()]
        out.append(("Imbalance (share of prompts; lower is better)", ["", hb, ha, "Δ"], rows))
    if b.get("scores") or a.get("scores"):
        rows = [_row(n, b, a, "scores", "rewards", n) for n in _keys(b, a, "scores", "rewards")]
        out.append(("Self-scores on the eval images (mean)", ["reward", hb, ha, "Δ"],
                    [*rows, _row("total", b, a, "scores", "total")]))
    return out


def round_table(report: dict[str, Any]) -> Table:
    headers = ["round", "eval", "trained (steps)", "train reward", "GenEval", "und clean", "und own",
               "imbalance", "self-score"]
    paths = [("geneval", "overall"), ("understanding", "clean", "overall"),
             ("understanding", "geneval_correct", "overall"), ("understanding", "imbalance", "imbalance"),
             ("scores", "total")]
    rows = []
    for r in report["rounds"]:
        phases = ", ".join(f"{ph['phase']} ({max(ph['steps'], default=0)})" for ph in r["training"] or [])
        rewards = [v for ph in r["training"] or [] for v in ph["metrics"].get("reward/mean", []) if v is not None]
        rows.append([str(r["round"]), "yes" if r["evaluated"] else "no", phases or ("baseline" if r["round"] == 0 else "–"),
                     _f(rewards[-1] if rewards else None), *(_f(_get(r, *p)) for p in paths)])
    return "Per round", headers, rows


def changes(report: dict[str, Any]) -> list[str]:
    """Short sentences of what moved between round 0 and the last round."""
    b, a, _, _ = _pair(report)
    if not a:
        return ["Only the baseline is evaluated so far: nothing to compare yet."]
    out = []

    def moved(name: str, *keys: str, note: str = "") -> None:
        x, y = _get(b, *keys), _get(a, *keys)
        if x is not None or y is not None:
            out.append(f"{name}: {_f(x)} → {_f(y)} ({_f(_sub(y, x), True)}){note}.")

    from unirl_kit.eval.geneval.paired import describe

    paired = _get(report, "paired", "all") or {}
    moved("GenEval overall", "geneval", "overall",
          note=f"; paired {describe(paired['overall'])}" if paired.get("overall") else "")
    deltas = {t: e for t, e in (paired.get("tags") or {}).items() if e.get("delta") is not None}
    if len(deltas) > 1:
        up = sorted(deltas, key=lambda t: (-deltas[t]["delta"], t))
        out.append(f"GenEval per tag: best {up[0]} ({describe(deltas[up[0]])}), worst {up[-1]} "
                   f"({describe(deltas[up[-1]])}).")
    for name, title in UND_TYPES.items():
        moved(f"Understanding on {title}", "understanding", name, "overall")
    moved("Imbalance", "understanding", "imbalance", "imbalance", note=", lower is better")
    moved("Mean self-score", "scores", "total")
    steps = sum(max(ph["steps"], default=0) for r in report["rounds"] for ph in r["training"] or [])
    if steps:
        out.append(f"{steps} training steps logged in all; train reward per step in figures/reward_curve.png.")
    return out


def _md_table(table: Table, level: str = "###") -> list[str]:
    title, headers, rows = table
    return [f"{level} {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def to_markdown(report: dict[str, Any]) -> str:
    evaluated = sum(r["evaluated"] for r in report["rounds"])
    planned, last = report["planned_rounds"], report["last_round"]
    plan = f" (training rounds planned: {planned}, train: {report['train_mode']})" if planned is not None else ""
    lines = [f"# UniRL loop report: {report['loop']}", "",
             f"{evaluated} of {len(report['rounds'])} round folders evaluated{plan}. Before = round 0 "
             f"(no training), after = round {'–' if last is None else last}.", "",
             "## What changed", "", *(f"- {s}" for s in changes(report)), "", "## Before / after", ""]
    for table in tables(report):
        lines += _md_table(table)
    lines += _md_table(round_table(report), "##")
    made = [(name, path) for name, path in report["figures"].items() if path]
    if made:
        lines += ["## Figures", "", *(f"![{name.replace('_', ' ')}]({path})" for name, path in made), ""]
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    """The before/after tables and the change sentences, in the terminal."""
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console()
    for title, headers, rows in [*tables(report), round_table(report)]:
        table = RichTable(*headers, title=title)
        for r in rows:
            table.add_row(*r, style="bold" if r[0] in ("overall", "total") else None)
        console.print(table)
    for sentence in changes(report):
        console.print(f"• {sentence}")


def write_report(loop_dir: Path) -> dict[str, Any]:
    """report.json, report.md and figures/*.png in `loop_dir`; returns the report dict."""
    from unirl_kit.loop.figures import draw

    report = build_report(loop_dir := Path(loop_dir))
    report["figures"] = draw(report, loop_dir)
    write_atomic(loop_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(loop_dir / "report.md", to_markdown(report))
    return report
