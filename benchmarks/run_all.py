"""Every size-able benchmark at one size, and one CI benchmark report (report.md + report.json).

python benchmarks/run_all.py [--size smoke|small] [--out runs/bench]   (`nox -s bench`; `.ci/run` runs smoke)
Each benchmark prints its ratios measured side by side in one run; this collects their JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["eval_throughput", "generate_throughput", "reward_throughput", "showo_sampler", "train_step", "best_of_n"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"size": args.size, "benchmarks": {}}
    lines = [f"# Benchmarks ({args.size})", ""]
    failed = []
    for name in BENCHMARKS:
        script = HERE / f"{name}.py"
        if not script.exists():
            continue
        out_json = args.out / f"{name}.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), "--size", args.size, "--json", str(out_json)],
                              capture_output=True, text=True)
        seconds = round(time.perf_counter() - t0, 1)
        printed = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        entry = {"seconds": seconds, "returncode": proc.returncode, "printed": printed,
                 "result": json.loads(out_json.read_text()) if out_json.exists() else None}
        report["benchmarks"][name] = entry
        lines += [f"## {name} ({seconds} s{'' if proc.returncode == 0 else ', FAILED'})", "", "```", *printed, "```", ""]
        if proc.returncode != 0:
            failed.append(name)
            lines += ["```", *proc.stderr.splitlines()[-15:], "```", ""]
        print(f"{name}: {seconds} s, rc {proc.returncode}", flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text("\n".join(lines))
    print(f"report: {args.out / 'report.md'}")
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
