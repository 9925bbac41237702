"""The ceiling of self-improvement by a judge: best-of-N chosen by each self-judge, against pass@1 and the
oracle (GenEval's own verdict), per tag and overall. Run it before tuning a trainer (issue 20).

python benchmarks/best_of_n.py [--n 300] [--group 8] [--seed 1234] [--out runs/bench/best_of_n]
    [--judges self-qa self-qa-likelihood self-caption self-qa-contrast self-ensemble] [--option JUDGE.key=value]
    [--scores FILE] [--model DIR] [--size smoke]

Stages (each the library's own, each resumable): `unirl prompts` (the held-out eval set of the loop,
seed 1234), `generate` (N images per prompt, image k of prompt i seeded by (seed, i, k)), `eval geneval`
(the `shapes` detector), `score` (every judge on every image). Then, per tag:
- pass@1: the share of images GenEval calls correct (what GenEval reports);
- oracle pass@N: the share of prompts with at least one correct image (best-of-N with a perfect judge);
- best-of-N by a judge: the verdict of the image the judge scores highest in each group (ties: the mean
  verdict of the tied images, i.e. a random pick among them);
- AUC in groups: P(judge scores a correct image above a wrong one of the same prompt), ties half.
`rank-mean` is the mean of the judges' in-group ranks (each judge's scale drops out). Another judge set
on the same images: `--scores OTHER.jsonl` (a scores file keeps one reward set). Overall is GenEval's
unweighted mean over the six tags; the gain's 95% interval is a bootstrap over prompts within tags.
If the best judge's best-of-N minus pass@1 is under +0.10, sharpening by that judge cannot reach it.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from unirl_kit.eval.geneval.paired import interval, tag_bootstrap

JUDGES = ["self-qa", "self-qa-likelihood", "self-caption", "self-qa-contrast", "self-ensemble"]
SIZES = {"smoke": {"n": 6, "group": 2}, "full": {"n": 300, "group": 8}}


def run_stages(out: Path, n: int, group: int, seed: int, judges: list[str], model: str | None,
               options: dict[str, dict], scores: Path | None = None) -> tuple[Path, Path]:
    """prompts -> generate -> eval geneval -> score; returns (results.jsonl, scores.jsonl)."""
    from unirl_kit.backbones.config import BackboneConfig, build_backbone
    from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval
    from unirl_kit.generation.run import GenerateConfig, run_generate
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts
    from unirl_kit.scoring.run import ScoreConfig, run_score

    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "eval.jsonl"
    if not prompts.exists():
        run_prompts(PromptsConfig(world="shapes", n=n, seed=seed, out=str(prompts)))
    spec = BackboneConfig(name="tiny-shapes", model=model, dtype="auto")
    backbone = build_backbone(spec)
    samples = out / "samples"
    run_generate(GenerateConfig(backbone=spec, prompts=str(prompts), out=str(samples), group_size=group, seed=seed,
                                batch_size=64, progress=False), backbone)
    run_geneval(GenevalConfig(images_dir=str(samples), out=str(out / "geneval"), progress=False))
    scores = scores or out / "scores.jsonl"
    run_score(ScoreConfig(samples_dir=str(samples), out=str(scores), rewards=judges, reward_options=options,
                          backbone=spec, batch_size=32, progress=False), backbone)
    return out / "geneval" / "results.jsonl", scores


def load_groups(results: Path, scores: Path, judges: list[str]) -> dict[str, list[dict]]:
    """prompt folder -> its images: {tag, correct, judge scores}, joined on the image's path in the folder."""
    verdicts = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        verdicts["/".join(Path(r["filename"]).parts[-3:])] = r
    groups: dict[str, list[dict]] = defaultdict(list)
    for line in scores.read_text().splitlines():
        s = json.loads(line)
        v = verdicts[s["filename"]]
        groups[s["filename"].split("/")[0]].append({"tag": s["tag"], "correct": bool(v["correct"]),
                                                     **{j: s["rewards"][j] for j in judges}})
    return groups


def ranks(values: list[float]) -> np.ndarray:
    """Average ranks (ties share), 0-based."""
    v = np.asarray(values)
    order = v.argsort(kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    for x in np.unique(v):
        r[v == x] = r[v == x].mean()
    return r


def pick_verdict(members: list[dict], key: str) -> float:
    """Verdict of the judge's top image; a tie at the top counts as a random pick among the tied."""
    scores = np.array([m[key] for m in members])
    top = scores == scores.max()
    return float(np.mean([m["correct"] for m, t in zip(members, top, strict=True) if t]))


def group_auc(members: list[dict], key: str) -> tuple[float, int]:
    wins, pairs = 0.0, 0
    for a in (m for m in members if m["correct"]):
        for b in (m for m in members if not m["correct"]):
            wins += 1.0 if a[key] > b[key] else 0.5 if a[key] == b[key] else 0.0
            pairs += 1
    return wins, pairs


def per_prompt(groups: dict[str, list[dict]], judges: list[str]) -> list[dict]:
    """One row per prompt: tag, pass@1, oracle, best-of-N verdict and AUC counts per judge."""
    rows = []
    for members in groups.values():
        for m, r in zip(members, np.mean([ranks([x[j] for x in members]) for j in judges], axis=0), strict=True):
            m["rank-mean"] = float(r)
        row = {"tag": members[0]["tag"], "pass@1": float(np.mean([m["correct"] for m in members])),
               "oracle": float(any(m["correct"] for m in members))}
        for j in [*judges, "rank-mean"]:
            row[j] = pick_verdict(members, j)
            row[f"{j}:auc"] = group_auc(members, j)
        rows.append(row)
    return rows


def summarize(rows: list[dict], judges: list[str], boots: int = 2000, seed: int = 0) -> dict:
    """Per tag and overall (mean of tags): pass@1, oracle, best-of-N per judge and its gain with a 95%
    bootstrap interval over prompts (resampled within each tag), AUC in groups."""
    keys = ["pass@1", "oracle", *judges, "rank-mean"]
    by_tag: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_tag[r["tag"]].append(r)
    table: dict[str, dict] = {}
    for tag, sel in by_tag.items():
        entry = {"prompts": len(sel), **{k: float(np.mean([r[k] for r in sel])) for k in keys}}
        for j in [*judges, "rank-mean"]:
            wins = sum(r[f"{j}:auc"][0] for r in sel)
            pairs = sum(r[f"{j}:auc"][1] for r in sel)
            entry[f"{j}:auc"] = wins / pairs if pairs else None
        table[tag] = entry
    tags = sorted(by_tag)
    overall = {"prompts": len(rows), **{k: float(np.mean([table[t][k] for t in tags])) for k in keys}}
    for j in ["oracle", *judges, "rank-mean"]:
        gains = {t: np.array([r[j] - r["pass@1"] for r in by_tag[t]]) for t in tags}
        overall[f"{j}:gain_ci"] = interval(tag_bootstrap(gains, boots, seed)[1])
        if j != "oracle":  # the oracle is the verdict itself: no ranking to score
            wins, pairs = sum(r[f"{j}:auc"][0] for r in rows), sum(r[f"{j}:auc"][1] for r in rows)
            overall[f"{j}:auc"] = wins / pairs if pairs else None
    table["overall"] = overall
    return table


def markdown(table: dict, judges: list[str], group: int) -> str:
    cols = ["pass@1", f"oracle pass@{group}", *(f"best-of-{group}: {j}" for j in [*judges, "rank-mean"])]
    keys = ["pass@1", "oracle", *judges, "rank-mean"]
    lines = ["| tag | prompts | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for tag in [*[t for t in table if t != "overall"], "overall"]:
        e = table[tag]
        cells = [f"{e[k]:.3f}" for k in keys]
        lines.append(f"| {tag} | {e['prompts']} | " + " | ".join(cells) + " |")
    lines += ["", "| judge | best-of-N minus pass@1 (95% CI) | AUC in groups | " +
              " | ".join(t for t in table if t != "overall") + " |", "|---" * (3 + len(table) - 1) + "|"]
    o = table["overall"]
    for j in ["oracle", *judges, "rank-mean"]:
        lo, hi = o[f"{j}:gain_ci"]
        auc = "" if o.get(f"{j}:auc") is None else f"{o[f'{j}:auc']:.3f}"
        per_tag = [("" if table[t].get(f"{j}:auc") is None else f"{table[t][f'{j}:auc']:.2f}") for t in table
                   if t != "overall"]
        lines.append(f"| {j} | {o[j] - o['pass@1']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {auc} | " + " | ".join(per_tag) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--n", type=int, default=None, help="prompts (default: the size's)")
    ap.add_argument("--group", type=int, default=None, help="images per prompt (default: the size's)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=None, help="default: runs/bench/best_of_n/SIZE")
    ap.add_argument("--judges", nargs="+", default=JUDGES)
    ap.add_argument("--option", action="append", default=[], help="JUDGE.key=value, e.g. self-caption.judge=reference")
    ap.add_argument("--model", default=None, help="the model's weights (default: the shipped tiny-shapes)")
    ap.add_argument("--scores", type=Path, default=None, help="the judges' scores file (default: OUT/scores.jsonl)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table here (benchmarks/run_all.py)")
    args = ap.parse_args()
    size = SIZES[args.size]
    args.out = args.out or Path("runs/bench/best_of_n") / args.size
    n, group = args.n or size["n"], args.group or size["group"]
    options: dict[str, dict] = defaultdict(dict)
    for text in args.option:
        key, _, value = text.partition("=")
        judge, _, field = key.rpartition(".")
        options[judge][field] = json.loads(value) if value[:1] in "[{0123456789-" else value
    results, scores = run_stages(args.out, n, group, args.seed, args.judges, args.model, dict(options), args.scores)
    table = summarize(per_prompt(load_groups(results, scores, args.judges), args.judges), args.judges)
    text = markdown(table, args.judges, group)
    print(text)
    stem = scores.stem.replace("scores", "best_of_n")
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(table, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
