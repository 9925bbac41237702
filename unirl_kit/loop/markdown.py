"""The loop report as text: report.md and the terminal tables, from the dict report.py builds.

Every delta is printed with its 95% bootstrap interval and its n (prompts / images), or with why it has
no interval; a change is called a gain or a loss only when its interval excludes 0.
"""

from __future__ import annotations

from typing import Any

from unirl_kit.eval.geneval.paired import MIN_UNITS, delta_text, describe, excludes_zero, n_text
from unirl_kit.loop.report import IMBALANCE_KEYS, UND_TYPES, Table, _get, _keys

DELTA, N = "Δ [95% CI]", "n (prompts / images)"


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _pair(report: dict[str, Any]) -> tuple[dict, dict, str, str]:
    """(round 0, last evaluated round, their column headers); {} for a round not there."""
    rounds, last = {r["round"]: r for r in report["rounds"]}, report["last_round"]
    return rounds.get(0, {}), rounds.get(last, {}), "round 0", "last round" if last is None else f"round {last}"


def _row(label: str, before: dict, after: dict, entry: dict | None, *keys: str) -> list[str]:
    """label, before, after, delta with its interval, n."""
    return [label, _f(_get(before, *keys)), _f(_get(after, *keys)), delta_text(entry or {}), n_text(entry or {})]


def tables(report: dict[str, Any]) -> list[Table]:
    """Before/after tables: GenEval per tag, understanding per question type, imbalance, self-scores."""
    b, a, hb, ha = _pair(report)
    d = report.get("delta") or {}
    head = [hb, ha, DELTA, N]
    rows = [_row(t, b, a, _get(d, "geneval", "tags", t), "geneval", "tags", t) for t in _keys(b, a, "geneval", "tags")]
    rows.append(_row("overall", b, a, _get(d, "geneval", "overall"), "geneval", "overall"))
    out: list[Table] = [("GenEval (Δ paired over the eval prompts: same prompts, same image seeds)", ["task", *head],
                         rows)]
    held = report.get("held_out")
    if held:
        tags = ", ".join(_get(report, "prompt_overlap", "overlapping_tags") or [])
        rows = [[t, delta_text(e), n_text(e)] for t, e in held["tags"].items()]
        out.append((f"GenEval on held-out eval prompts only (training also drew {tags}: their prompts are eval "
                    "prompts with other image seeds)", ["task", DELTA, N], [*rows, ["overall", delta_text(
                        held["overall"]), n_text(held["overall"])]]))
    for name, title in UND_TYPES.items():
        if _get(b, "understanding", name) or _get(a, "understanding", name):
            path = ("understanding", name)
            rows = [_row(t, b, a, _get(d, *path, "accuracy", t), *path, "accuracy", t)
                    for t in _keys(b, a, *path, "accuracy")]
            rows.append(_row("overall", b, a, _get(d, *path, "overall"), *path, "overall"))
            out.append((f"Understanding accuracy: {title}", ["question type", *head], rows))
    if _get(b, "understanding", "imbalance") or _get(a, "understanding", "imbalance"):
        rows = [_row(label, b, a, _get(d, "imbalance", k), "understanding", "imbalance", k)
                for k, label in IMBALANCE_KEYS.items()]
        out.append(("Imbalance (share of prompts; lower is better)", ["", *head], rows))
    if b.get("scores") or a.get("scores"):
        rows = [_row(n, b, a, _get(d, "scores", "rewards", n), "scores", "rewards", n)
                for n in _keys(b, a, "scores", "rewards")]
        out.append(("Self-scores on the eval images (mean)", ["reward", *head],
                    [*rows, _row("total", b, a, _get(d, "scores", "total"), "scores", "total")]))
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


def beyond(name: str, entries: dict[str, Any], what: str = "tag") -> str | None:
    """Best / worst of `entries` among those whose interval excludes 0, else that none moved beyond it."""
    have = {k: e for k, e in entries.items() if e and e.get("delta") is not None}
    if len(have) < 2:
        return None
    up = sorted((k for k, e in have.items() if excludes_zero(e) > 0), key=lambda k: (-have[k]["delta"], k))
    down = sorted((k for k, e in have.items() if excludes_zero(e) < 0), key=lambda k: (have[k]["delta"], k))
    parts = ([f"best {up[0]} ({describe(have[up[0]])})"] if up else []) + \
        ([f"worst {down[0]} ({describe(have[down[0]])})"] if down else [])
    if parts:
        return f"{name} per {what}, among changes beyond their interval: {', '.join(parts)}."
    bare = sum(e.get("ci") is None for e in have.values())
    note = f" ({bare} of {len(have)} without one: under {MIN_UNITS} units, or no per-item results)" if bare else ""
    return f"{name} per {what}: no {what} changed beyond its interval{note}."


def changes(report: dict[str, Any]) -> list[str]:
    """Short sentences of what moved between round 0 and the last round."""
    b, a, _, _ = _pair(report)
    if not a:
        return ["Only the baseline is evaluated so far: nothing to compare yet."]
    d = report.get("delta") or {}
    out: list[str | None] = []

    def moved(name: str, entry: dict | None, *keys: str, note: str = "") -> None:
        x, y = _get(b, *keys), _get(a, *keys)
        if x is not None or y is not None:
            out.append(f"{name}: {_f(x)} → {_f(y)} (Δ {describe(entry or {})}){note}.")

    moved("GenEval overall", _get(d, "geneval", "overall"), "geneval", "overall")
    out.append(beyond("GenEval", _get(d, "geneval", "tags") or {}))
    for name, title in UND_TYPES.items():
        moved(f"Understanding on {title}", _get(d, "understanding", name, "overall"), "understanding", name, "overall")
        if _get(a, "understanding", name):
            out.append(beyond(f"Understanding on {title}", _get(d, "understanding", name, "accuracy") or {},
                              "question type"))
    moved("Imbalance", _get(d, "imbalance", "imbalance"), "understanding", "imbalance", "imbalance",
          note=", lower is better")
    moved("Mean self-score", _get(d, "scores", "total"), "scores", "total")
    steps = sum(max(ph["steps"], default=0) for r in report["rounds"] for ph in r["training"] or [])
    if steps:
        out.append(f"{steps} training steps logged in all; train reward per step in figures/reward_curve.png.")
    return [s for s in out if s]


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
             f"(no training), after = round {'–' if last is None else last}. Each Δ: 95% bootstrap interval, "
             f"paired over the units both rounds share (unpaired where they differ); none under {MIN_UNITS} "
             "units.", "", "## What changed", "", *(f"- {s}" for s in changes(report)), "", "## Before / after", ""]
    for table in tables(report):
        lines += _md_table(table)
    lines += _md_table(round_table(report), "##")
    made = [(name, path) for name, path in report["figures"].items() if path]
    if made:
        lines += ["## Figures", "", "Error bars and bands: 95% intervals (see README, \"The loop report\").", "",
                  *(f"![{name.replace('_', ' ')}]({path})" for name, path in made), ""]
    sheets = [(r["round"], r.get("contact_sheet")) for r in report["rounds"] if r.get("contact_sheet")]
    if sheets:
        lines += ["## Contact sheets", "", "Each evaluated round's eval images, one cell per prompt (its text and "
                  "GenEval verdicts above).", "", *(f"- round {i}: [{path}]({path})" for i, path in sheets), ""]
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
