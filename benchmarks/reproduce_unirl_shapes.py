"""UniRL's comparison reproduced on tiny-shapes: the shipped baseline, UniRL-SFT, UniRL-GRPO (self-qa
reward) and GRPO with the `geneval` reward (the detector as judge, as Flow-GRPO does), each over seeds.

python benchmarks/reproduce_unirl_shapes.py [--size smoke|small|full] [--seeds 0 1 2] [--out runs/reproduce]
Each arm x seed is one `unirl loop` (configs/loop/tiny_shapes.yaml plus the arm's overrides), so it
resumes where it stopped; the table (mean ± std over seeds) goes to OUT/table.md and OUT/table.json.
Issue 6's target: UniRL-GRPO raises overall GenEval-shapes by >= 0.10 over the baseline within 30 min
of CPU, with understanding accuracy not lower and the imbalance lower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

# size -> (held-out prompts, images each, training steps, clean renders per question type)
SIZES = {"smoke": (6, 2, 1, 2), "small": (60, 2, 20, 20), "full": (300, 4, 150, 50)}
ARMS = {
    "baseline": {"rounds": 0},
    "unirl-sft": {"rounds": 1, "train": "sft"},
    "unirl-grpo (self-qa)": {"rounds": 1, "train": "grpo", "reward": "self-qa"},
    "grpo (geneval reward)": {"rounds": 1, "train": "grpo", "reward": "geneval"},
}
ROOT = Path(__file__).resolve().parents[1]


def run_arm(arm: str, seed: int, size: str, out: Path) -> dict:
    from unirl_kit.config import load_config
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.loop.run import run_loop

    n_eval, group, steps, per_tag = SIZES[size]
    spec = ARMS[arm]
    over = [f"out={out}", f"seed={seed}", f"rounds={spec['rounds']}", f"n_eval={n_eval}", f"eval_group_size={group}",
            f"understanding_per_tag={per_tag}", "progress=false",
            f"grpo_config={ROOT / 'configs/grpo/tiny_shapes.yaml'}", f"sft_config={ROOT / 'configs/sft/tiny_shapes.yaml'}"]
    if "train" in spec:
        over.append(f"train={spec['train']}")
    cfg = load_config(LoopConfig, ROOT / "configs" / "loop" / "tiny_shapes.yaml", {}, over)
    cfg.grpo_overrides = [f"run.steps={steps}", f"rewards=[{spec.get('reward', 'self-qa')}]"]
    cfg.sft_overrides = [f"run.steps={steps}"]
    t0 = time.perf_counter()
    report = run_loop(cfg)
    last = report["rounds"][-1]
    und = (last.get("understanding") or {})
    return {"arm": arm, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
            "geneval": last["geneval"], "clean": und.get("clean"), "imbalance": und.get("imbalance")}


def _mean_std(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def table(rows: list[dict]) -> str:
    tags = sorted({t for r in rows for t in (r["geneval"] or {}).get("tags", {})})
    types = sorted({t for r in rows for t in ((r["clean"] or {}).get("accuracy") or {})})
    head = ["arm", "GenEval overall", *tags, "understanding (clean)", *[f"und {t}" for t in types], "imbalance", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ARMS:
        sel = [r for r in rows if r["arm"] == arm]
        if not sel:
            continue
        cells = [arm, _mean_std([r["geneval"]["overall"] for r in sel])]
        cells += [_mean_std([r["geneval"]["tags"].get(t) for r in sel]) for t in tags]
        cells.append(_mean_std([(r["clean"] or {}).get("overall") for r in sel]))
        cells += [_mean_std([((r["clean"] or {}).get("accuracy") or {}).get(t) for r in sel]) for t in types]
        cells.append(_mean_std([(r["imbalance"] or {}).get("imbalance") for r in sel]))
        cells.append(_mean_std([r["seconds"] for r in sel]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for arm in args.arms:
        for seed in args.seeds:
            folder = args.out / args.size / arm.split(" ")[0] / (arm.split("(")[-1].rstrip(")") if "(" in arm else "") / f"seed{seed}"
            rows.append(run_arm(arm, seed, args.size, folder))
            print(f"{arm} seed {seed}: GenEval {rows[-1]['geneval']['overall']:.3f} in {rows[-1]['seconds']} s", flush=True)
    text = table(rows)
    (args.out / args.size).mkdir(parents=True, exist_ok=True)
    (args.out / args.size / "table.md").write_text(text)
    (args.out / args.size / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
