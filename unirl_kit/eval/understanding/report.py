"""Tables of an understanding summary, built once and rendered as markdown (summary.md) or rich (terminal)."""

from __future__ import annotations

from typing import Any

Table = tuple[str, list[str], list[list[str]]]  # title, headers, rows


def _f(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"


def _per_tag(title: str, m: dict[str, Any], count_key: str) -> Table:
    rows = [[tag, _f(acc), _f(m["credit"][tag]), str(m[count_key][tag]) if count_key in m else ""]
            for tag, acc in m["accuracy"].items()]
    rows.append(["overall", _f(m["overall"]), _f(m.get("overall_credit")), ""])
    return title, ["question type", "accuracy", "credit", "answered"], rows


def tables(summary: dict[str, Any]) -> list[Table]:
    out: list[Table] = []
    for name, m in summary["protocols"].items():
        if name == "geneval_correct":
            title = (f"UniRL protocol: self-QA on {m['images_judged_correct']} of {m['images']} generated images "
                     "judged correct")
            out.append(_per_tag(title, m, "answered"))
        elif name == "clean":
            m = {**m, "answered": {t: m["per_tag"] for t in m["accuracy"]}}
            out.append(_per_tag(f"Clean renders ({m['per_tag']} per type, seed {m['seed']})", m, "answered"))
        elif name == "pope":
            c = m["counts"]
            out.append((f"POPE ({m['strategy']}, {m['images']} images)",
                        ["accuracy", "precision", "recall", "F1", "yes ratio", "unparsed", "questions"],
                        [[_f(m["accuracy"]), _f(m["precision"]), _f(m["recall"]), _f(m["f1"]), _f(m["yes_ratio"]),
                          _f(m["unparsed"]), str(c["questions"])]]))
        elif name == "vqa":
            rows = [[t, _f(v["accuracy"]), _f(v["soft_accuracy"]), str(v["questions"])] for t, v in m["types"].items()]
            rows.append(["overall", _f(m["accuracy"]), _f(m["soft_accuracy"]), str(m["questions"])])
            out.append(("VQA", ["type", "accuracy", "soft accuracy", "questions"], rows))
        elif name == "imbalance":
            out.append((f"Imbalance over {m['prompts']} prompts (gen: {m['gen_rule']}, und: {m['und_rule']})",
                        ["gen right, und wrong", "und right, gen wrong", "imbalance", "gen right", "und right"],
                        [[_f(m["gen_right_und_wrong"]), _f(m["und_right_gen_wrong"]), _f(m["imbalance"]),
                          _f(m["gen_right_share"]), _f(m["und_right_share"])]]))
    return out


def to_markdown(summary: dict[str, Any]) -> str:
    model = summary.get("model") or "default weights"
    lines = [f"# Understanding: {summary['backbone']} ({model})", ""]
    for title, headers, rows in tables(summary):
        lines += [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def print_tables(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console()
    for title, headers, rows in tables(summary):
        table = RichTable(title=title)
        for h in headers:
            table.add_column(h)
        for r in rows:
            table.add_row(*r, style="bold" if r[0] == "overall" else None)
        console.print(table)
