"""What a scored sample set says before training on it: reward means and spreads, overall, per tag
and per prompt group.

GRPO normalises each reward within its prompt's group, so a group whose images all score the same
(zero std) teaches nothing; `zero_std_share` is the share of such groups. std is the population
std (ddof=0), so a one-image group counts as zero std, which it is for GRPO.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any


def mean_std(values: Sequence[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))}


def _stats(groups: list[list[float]]) -> dict[str, float]:
    """Pooled mean/std, mean within-group std, and the share of groups with all scores equal."""
    flat = [v for g in groups for v in g]
    return {**mean_std(flat),
            "group_std_mean": sum(mean_std(g)["std"] for g in groups) / len(groups),
            "zero_std_share": sum(len(set(g)) == 1 for g in groups) / len(groups)}


def _block(groups: list[list[dict[str, Any]]], names: Sequence[str]) -> dict[str, Any]:
    return {"samples": sum(len(g) for g in groups), "prompts": len(groups),
            "total": _stats([[r["reward"] for r in g] for g in groups]),
            "rewards": {n: _stats([[r["rewards"][n] for r in g] for g in groups]) for n in names}}


def summarize(rows: Sequence[dict[str, Any]], weights: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """Rows of scores.jsonl (in scan order) -> the summary; `total` is the weighted sum."""
    names = [n for n, _ in weights]
    by_prompt: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_index"], []).append(row)
    groups = list(by_prompt.values())
    tags: dict[str, list[list[dict[str, Any]]]] = {}
    for g in groups:
        tags.setdefault(g[0]["tag"], []).append(g)
    return {
        "weights": dict(weights),
        "overall": _block(groups, names),
        "tags": {tag: _block(gs, names) for tag, gs in tags.items()},
        "groups": [{"prompt_index": i, "tag": g[0]["tag"], "prompt": g[0]["prompt"], "samples": len(g),
                    "total": mean_std([r["reward"] for r in g]),
                    "rewards": {n: mean_std([r["rewards"][n] for r in g]) for n in names}}
                   for i, g in by_prompt.items()],
    }


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2) + "\n"


def print_table(summary: dict[str, Any]) -> None:
    """Per tag and overall: total mean ± std, each reward's mean, and the zero-std group share."""
    from rich.console import Console
    from rich.table import Table

    names = list(summary["weights"])
    table = Table(title="rewards")
    for col in ("tag", "images", "prompts", "total (mean ± std)", *names, "zero-std groups"):
        table.add_column(col)

    def row(label: str, block: dict[str, Any], **style: Any) -> None:
        total = block["total"]
        table.add_row(label, str(block["samples"]), str(block["prompts"]),
                      f"{total['mean']:.4f} ± {total['std']:.4f}",
                      *(f"{block['rewards'][n]['mean']:.4f}" for n in names),
                      f"{100 * total['zero_std_share']:.1f}%", **style)

    for tag, block in summary["tags"].items():
        row(tag, block)
    row("overall", summary["overall"], style="bold")
    Console().print(table)
