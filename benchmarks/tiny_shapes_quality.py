"""The tiny-shapes model's quality, as issue 3 states it: GenEval-shapes on a held-out prompt set
(the shapes_eval config's seed; N prompts x 4 images, fixed seeds) and QA accuracy on clean renders.

python benchmarks/tiny_shapes_quality.py [--model DIR] [--n 300] [--group 4] [--per-tag 50] [--cfg-scale S] [--temperature 1]
    [--device auto] [--out runs/bench/tiny_shapes_quality]
Resumable (generation and scoring skip finished work). Prints one table and writes quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an exported tiny-shapes folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--per-tag", type=int, default=50, help="clean renders per question type")
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the weights' own (shipped: 1.5)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/tiny_shapes_quality"))
    args = ap.parse_args()

    from unirl_kit.backbones.base import resolve_cfg_scale
    from unirl_kit.backbones.config import BackboneConfig, SamplingConfig, build_backbone
    from unirl_kit.eval.geneval.runner import GenevalConfig, run_geneval
    from unirl_kit.eval.understanding.clean import clean_render_accuracy
    from unirl_kit.generation.run import GenerateConfig, run_generate
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts

    prompts = args.out / "prompts.jsonl"
    if not prompts.exists():
        run_prompts(PromptsConfig(world="shapes", n=args.n, seed=1234, out=str(prompts)))
    gen_cfg = GenerateConfig(backbone=BackboneConfig(name="tiny-shapes", model=args.model, device=args.device,
                                                     dtype="auto"),
                             sampling=SamplingConfig(cfg_scale=args.cfg_scale, temperature=args.temperature),
                             prompts=str(prompts), out=str(args.out / "images"), group_size=args.group,
                             batch_size=64, progress=False)
    backbone = build_backbone(gen_cfg.backbone)
    t0 = time.perf_counter()
    gen = run_generate(gen_cfg, backbone)
    t_gen = time.perf_counter() - t0
    summary = run_geneval(GenevalConfig(images_dir=str(args.out / "images"), out=str(args.out / "geneval"),
                                        detector="shapes", progress=False))
    t0 = time.perf_counter()
    und = clean_render_accuracy(backbone, per_tag=args.per_tag, seed=0)
    t_und = time.perf_counter() - t0
    report = {"model": args.model or "tiny-shapes (shipped)", "prompts": args.n, "group_size": args.group,
              "cfg_scale": resolve_cfg_scale(backbone, args.cfg_scale), "temperature": args.temperature, "device": str(backbone.device), "generate": gen,
              "generate_seconds": round(t_gen, 1), "geneval": summary,
              "understanding": {k: v for k, v in und.items() if k != "rows"}, "understanding_seconds": round(t_und, 1)}
    (args.out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "understanding_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in und["rows"]))
    print("geneval-shapes:", {t: round(v["score"], 3) for t, v in summary["tags"].items()},
          "overall", round(summary["overall"], 3))
    print("understanding (clean renders):", {t: round(v, 3) for t, v in und["accuracy"].items()},
          "overall", round(und["overall"], 3))
    print(f"generate: {gen['images_per_s']} images/s; understanding: {t_und:.1f} s")


if __name__ == "__main__":
    main()
