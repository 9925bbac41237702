"""UniRL's comparison reproduced on tiny-shapes: the shipped baseline, UniRL-SFT, UniRL-GRPO (self-qa
reward) and GRPO with the `geneval` reward (the detector as judge, as Flow-GRPO does), each over seeds.

python benchmarks/reproduce_unirl_shapes.py [--config configs/reproduce/tiny_shapes.yaml] [--size smoke|small|full]
    [--seeds 0 1 2] [--arms baseline unirl-grpo] [--out runs/reproduce]
Each arm x seed is one `unirl loop` (the config's loop_config plus the arm's and the size's settings), so a
killed run resumes where it stopped. A trained arm's round 0 is the baseline of the same seed (same model,
prompts and image seeds), so it is copied from there instead of evaluated again. The table (mean ± std over
seeds, and each arm's paired difference to the baseline) goes to OUT/SIZE/table.md and table.json; it holds
every arm x seed finished under OUT/SIZE, not only this run's.
Issue 6's target: UniRL-GRPO raises overall GenEval-shapes by >= 0.10 over the baseline within 30 min
of CPU, with understanding accuracy not lower and the imbalance lower.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "baseline"


@dataclass
class ReproduceConfig:
    loop_config: str = "configs/loop/tiny_shapes.yaml"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_seed: int = 1234
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)


def check_request(cfg: ReproduceConfig, arm: str, size: str) -> None:
    from unirl_kit.types import InputError

    if size not in cfg.sizes:
        raise InputError(f"--size {size!r}: the config's sizes are {', '.join(cfg.sizes)}")
    if arm not in cfg.arms:
        raise InputError(f"--arms {arm!r}: the config's arms are {', '.join(cfg.arms)}")


def loop_overrides(cfg: ReproduceConfig, arm: str, size: str, seed: int, out: Path) -> list[str]:
    """`unirl loop` overrides for one arm x seed: the size's eval and step counts, the arm's training."""
    from unirl_kit.config import read_yaml

    check_request(cfg, arm, size)
    sz = dict(cfg.sizes[size])
    spec = dict(cfg.arms[arm])
    steps = sz.pop("steps")
    steps = spec.pop("steps", {}).get(size, steps)  # an arm may set its own steps per size
    over = [f"out={out}", f"seed={seed}", f"eval_seed={cfg.eval_seed + seed}", "progress=false",
            *(f"{k}={v}" for k, v in sz.items())]
    for key, value in read_yaml(ROOT / cfg.loop_config).items():  # the loop config's trainer configs, found
        if key in ("grpo_config", "sft_config") and value and not Path(value).is_absolute():  # wherever we run
            over.append(f"{key}={ROOT / value}")
    if spec.get("rounds", 1):  # every trained arm gets the size's steps, whether it has overrides or not
        train = str(spec.get("train", "grpo"))
        for key in ("grpo_overrides", "sft_overrides"):
            if key.startswith(train) or train == "both" or (train == "raft" and key == "sft_overrides"):
                spec[key] = [*spec.get(key, []), f"run.steps={steps}"]
    for key, value in spec.items():
        if key in ("grpo_config", "sft_config") and value and not Path(value).is_absolute():  # an arm's own
            over.append(f"{key}={ROOT / value}")
        elif key in ("grpo_overrides", "sft_overrides"):
            over.append(f"{key}={json.dumps(value)}")
        else:
            over.append(f"{key}={value}")
    return over


def reuse_baseline(baseline: Path, out: Path) -> None:
    """Copy the finished round 0 (and its prompts) of the same seed's baseline into a trained arm's folder."""
    src = baseline / "round-000"
    if not (src / "eval.done.json").exists() or (out / "round-000" / "eval.done.json").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(baseline / "prompts", out / "prompts", dirs_exist_ok=True)
    shutil.copytree(src, out / "round-000", dirs_exist_ok=True)


def run_arm(cfg: ReproduceConfig, arm: str, seed: int, size: str, root: Path) -> dict:
    from unirl_kit.config import load_config
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.loop.run import run_loop

    out = root / arm / f"seed{seed}"
    if arm != BASELINE:
        reuse_baseline(root / BASELINE / f"seed{seed}", out)
    loop = load_config(LoopConfig, ROOT / cfg.loop_config, {}, loop_overrides(cfg, arm, size, seed, out))
    t0 = time.perf_counter()
    report = run_loop(loop)
    return row_of(arm, seed, report, round(time.perf_counter() - t0, 1))


def row_of(arm: str, seed: int, report: dict, seconds: float) -> dict:
    """One table row from a loop report: the last round's numbers and the seconds its training steps took."""
    last = report["rounds"][-1]
    und = last.get("understanding") or {}
    return {"arm": arm, "seed": seed, "seconds_this_run": seconds, "train_seconds": last.get("step_seconds") or 0.0,
            "geneval": last["geneval"], "clean": und.get("clean"), "imbalance": und.get("imbalance")}


def finished_rows(cfg: ReproduceConfig, root: Path, have: set[tuple[str, int]]) -> list[dict]:
    """Rows of the config's arms x seeds that earlier runs finished (their loop wrote report.json), so the
    table always holds everything measured under `root`, whichever arms and seeds this run was given."""
    rows = []
    for arm in cfg.arms:
        for seed in cfg.seeds:
            out = root / arm / f"seed{seed}"
            if (arm, seed) not in have and (out / "report.json").exists():
                rows.append(row_of(arm, seed, json.loads((out / "report.json").read_text()), 0.0))
    return rows


def _mean_std(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def paired_deltas(rows: list[dict], arm: str) -> list[float]:
    """Overall GenEval of `arm` minus the baseline's, seed by seed (same eval images): the comparison's noise floor."""
    base = {r["seed"]: r["geneval"]["overall"] for r in rows if r["arm"] == BASELINE}
    return [r["geneval"]["overall"] - base[r["seed"]] for r in rows if r["arm"] == arm and r["seed"] in base]


def table(rows: list[dict], arms: list[str]) -> str:
    tags = sorted({t for r in rows for t in (r["geneval"] or {}).get("tags", {})})
    types = sorted({t for r in rows for t in ((r["clean"] or {}).get("accuracy") or {})})
    head = ["arm", "seeds", "GenEval overall", "Δ vs baseline (paired)", *tags, "understanding (clean)",
            *[f"und {t}" for t in types], "imbalance", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        sel = [r for r in rows if r["arm"] == arm]
        if not sel:
            continue
        cells = [arm, str(len(sel)), _mean_std([r["geneval"]["overall"] for r in sel]),
                 "" if arm == BASELINE else _mean_std(paired_deltas(rows, arm))]
        cells += [_mean_std([r["geneval"]["tags"].get(t) for r in sel]) for t in tags]
        cells.append(_mean_std([(r["clean"] or {}).get("overall") for r in sel]))
        cells += [_mean_std([((r["clean"] or {}).get("accuracy") or {}).get(t) for r in sel]) for t in types]
        cells.append(_mean_std([(r["imbalance"] or {}).get("imbalance") for r in sel]))
        cells.append(_mean_std([r["train_seconds"] for r in sel]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from unirl_kit.config import load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "reproduce" / "tiny_shapes.yaml")
    ap.add_argument("--size", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the config's seeds")
    ap.add_argument("--arms", nargs="+", default=None, help="default: all of the config's arms")
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cfg = load_config(ReproduceConfig, args.config)
    # every comparison is paired with the baseline of its seed, so the baseline always runs first
    arms = [BASELINE] + [a for a in (args.arms or cfg.arms) if a != BASELINE]
    for arm in arms:  # a typo fails here, before hours of the arms named before it
        check_request(cfg, arm, args.size)
    root = args.out / args.size
    rows = []
    for seed in args.seeds or cfg.seeds:
        for arm in arms:
            rows.append(run_arm(cfg, arm, seed, args.size, root))
            print(f"{arm} seed {seed}: GenEval {rows[-1]['geneval']['overall']:.3f} "
                  f"(train {rows[-1]['train_seconds']} s; this run {rows[-1]['seconds_this_run']} s)", flush=True)
    rows += finished_rows(cfg, root, {(r["arm"], r["seed"]) for r in rows})
    rows.sort(key=lambda r: (list(cfg.arms).index(r["arm"]), r["seed"]))
    text = table(rows, list(cfg.arms))
    (root / "table.md").write_text(text)
    (root / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    from unirl_kit.types import InputError

    try:
        main()
    except InputError as err:  # a bad --arms/--size or config: one line, not a traceback
        raise SystemExit(f"error: {err}") from None
