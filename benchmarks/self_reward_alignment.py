"""How well does the model judge its own images? Self-rewards against GenEval's verdict, per tag.

python benchmarks/self_reward_alignment.py --results DIR/geneval/results.jsonl [--backbone tiny-shapes] [--model DIR]
    [--limit N] [--json OUT.json]
The results file is what `unirl eval geneval` writes for generated images (e.g. a `unirl loop` round's
`geneval/results.jsonl`, or `tiny_shapes_quality.py`'s). For every image two self-rewards are computed with
the backbone: `self-qa` (the graded greedy answer, the reward UniRL-GRPO trains on) and `self-qa-likelihood`
(the probability of the ground-truth answer, exp of its mean log-prob per token). Printed per tag: how often GenEval calls the image
correct; each reward's AUC for telling correct from wrong images (0.5 = no better than chance); and
the same inside groups (pairs of images of one prompt with different verdicts, the comparison GRPO's
group-relative advantage makes). A judge near 0.5 inside groups gives GRPO no signal about GenEval.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

REWARDS = ("self-qa", "self-qa-likelihood")


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a correct image's reward > a wrong one's), ties counted half; None without both kinds."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def within_group(rows: list[dict], key: str) -> tuple[float | None, int]:
    """AUC over pairs of one prompt's images with different verdicts, and the number of such pairs."""
    groups = defaultdict(list)
    for r in rows:
        groups[r["prompt"]].append(r)
    wins, pairs = 0.0, 0
    for members in groups.values():
        for a in (m for m in members if m["correct"]):
            for b in (m for m in members if not m["correct"]):
                wins += 1.0 if a[key] > b[key] else 0.5 if a[key] == b[key] else 0.0
                pairs += 1
    return (wins / pairs if pairs else None), pairs


def judge(results: Path, backbone_name: str, model: str | None, limit: int | None, batch: int = 32) -> list[dict]:
    """One row per judged image: tag, prompt, GenEval verdict and both self-rewards."""
    from PIL import Image

    from unirl_kit.backbones.loading import load_backbone
    from unirl_kit.prompts.schema import parse_spec
    from unirl_kit.registry import registry
    from unirl_kit.rewards.base import Sample

    lines = [json.loads(x) for x in results.read_text().splitlines() if x.strip()][:limit]
    backbone = load_backbone(backbone_name, model, "auto", "auto", {})
    rewards = {name: registry("rewards").build(name, backbone=backbone, batch_size=batch) for name in REWARDS}
    out = []
    for start in range(0, len(lines), batch):
        chunk = lines[start:start + batch]
        specs = [parse_spec(json.loads(r["metadata"]), f"{results}: line {start + i + 1}") for i, r in enumerate(chunk)]
        images = [Image.open(_image_path(results, r["filename"])).convert("RGB") for r in chunk]
        samples = [Sample(spec, im) for spec, im in zip(specs, images, strict=True)]
        scores = {name: reward(samples).scores for name, reward in rewards.items()}
        for i, r in enumerate(chunk):
            out.append({"tag": r["tag"], "prompt": r["prompt"], "correct": bool(r["correct"]),
                        **{name: scores[name][i] for name in REWARDS}})
    return out


def _image_path(results: Path, filename: str) -> Path:
    """Results name images as given to `eval geneval`: as is when that path exists, else under the results' run."""
    path = Path(filename)
    if path.exists():
        return path
    for base in results.parents:
        if (base / filename).exists():
            return base / filename
    raise FileNotFoundError(f"{results}: image {filename} not found (run from the folder eval geneval ran in)")


def summarize(rows: list[dict]) -> dict:
    by_tag: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_tag[r["tag"]].append(r)
    by_tag["all"] = rows
    table = {}
    for tag, sel in by_tag.items():
        entry = {"images": len(sel), "correct": sum(r["correct"] for r in sel)}
        for key in REWARDS:
            entry[f"{key}: mean if correct"] = _mean([r[key] for r in sel if r["correct"]])
            entry[f"{key}: mean if wrong"] = _mean([r[key] for r in sel if not r["correct"]])
            entry[f"{key}: AUC"] = auc([r[key] for r in sel if r["correct"]], [r[key] for r in sel if not r["correct"]])
            entry[f"{key}: AUC in groups"], entry["pairs in groups"] = within_group(sel, key)
        table[tag] = entry
    return table


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def _fmt(v) -> str:
    return "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True, help="a geneval results.jsonl of generated images")
    ap.add_argument("--backbone", default="tiny-shapes")
    ap.add_argument("--model", default=None, help="the judge's weights (default: the backbone's shipped/own)")
    ap.add_argument("--limit", type=int, default=None, help="judge the first N images only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    table = summarize(judge(args.results, args.backbone, args.model, args.limit))
    cols = ["images", "correct", "self-qa: mean if correct", "self-qa: mean if wrong", "self-qa: AUC",
            "self-qa: AUC in groups", "self-qa-likelihood: AUC", "self-qa-likelihood: AUC in groups", "pairs in groups"]
    print("| tag | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for tag, entry in table.items():
        print(f"| {tag} | " + " | ".join(_fmt(entry[c]) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
