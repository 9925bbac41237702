"""GenEval's summary, as the official `summary_scores.py` computes it, plus table and markdown."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """overall = unweighted mean of per-tag means (tags in order of first appearance)."""
    rows = list(rows)
    per_tag: dict[str, list[bool]] = {}
    per_prompt: dict[str, bool] = {}
    for row in rows:
        per_tag.setdefault(row["tag"], []).append(bool(row["correct"]))
        per_prompt[row["metadata"]] = per_prompt.get(row["metadata"], False) or bool(row["correct"])
    tags = {t: {"score": sum(v) / len(v), "correct": sum(v), "images": len(v)} for t, v in per_tag.items()}
    n = len(rows)
    return {
        "overall": sum(t["score"] for t in tags.values()) / len(tags) if tags else 0.0,
        "tags": tags,
        "total_images": n,
        "total_prompts": len(per_prompt),
        "pct_images_correct": 100.0 * sum(bool(r["correct"]) for r in rows) / n if n else 0.0,
        "pct_prompts_correct": 100.0 * sum(per_prompt.values()) / len(per_prompt) if per_prompt else 0.0,
    }


def to_markdown(summary: dict[str, Any]) -> str:
    lines = ["| task | score | correct / images |", "|---|---|---|"]
    for tag, t in summary["tags"].items():
        lines.append(f"| {tag} | {t['score']:.4f} | {t['correct']} / {t['images']} |")
    lines.append(f"| **overall** | **{summary['overall']:.4f}** | |")
    lines.append("")
    lines.append(f"Images: {summary['total_images']} ({summary['pct_images_correct']:.2f}% correct); "
                 f"prompts: {summary['total_prompts']} ({summary['pct_prompts_correct']:.2f}% with a correct image).")
    return "\n".join(lines) + "\n"


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="GenEval")
    for col in ("task", "score", "correct / images"):
        table.add_column(col)
    for tag, t in summary["tags"].items():
        table.add_row(tag, f"{t['score']:.4f}", f"{t['correct']} / {t['images']}")
    table.add_row("overall", f"{summary['overall']:.4f}", "", style="bold")
    console = Console()
    console.print(table)
    console.print(f"images {summary['total_images']} ({summary['pct_images_correct']:.2f}% correct), "
                  f"prompts {summary['total_prompts']} ({summary['pct_prompts_correct']:.2f}% with a correct image)")


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2) + "\n"
