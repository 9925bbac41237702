"""Paired GenEval deltas of offline_raft_probe.sh arms against the shipped model's images of the same seeds.

python benchmarks/offline_raft_probe.py NAME [NAME ...] [--root runs/offline_raft]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unirl_kit.eval.geneval.paired import describe, paired_delta, read_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("arms", nargs="+")
    parser.add_argument("--root", type=Path, default=Path("runs/offline_raft"))
    args = parser.parse_args()
    base = read_results(args.root / "base_eval" / "results.jsonl")
    for name in args.arms:
        delta = paired_delta(base, read_results(args.root / name / "eval_ge" / "results.jsonl"))
        tags = " ".join(f"{t} {e['delta']:+.3f}" for t, e in delta["tags"].items())
        print(f"{name}: {describe(delta['overall'])}; {tags}")


if __name__ == "__main__":
    main()
