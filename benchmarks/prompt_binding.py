"""Does a tiny-shapes model's generator read its prompt? Image-token NLL under the true prompt, another
scene's prompt of the same tag, and no prompt (the CFG unconditional one), per tag.

python benchmarks/prompt_binding.py [--model DIR] [--n 120] [--canonical-from TOKENIZER_DIR] [--align 4]
The gap "other prompt - true prompt" (nats per image) is what the prompt is worth to the generator:
near 0 means it draws the unconditional distribution whatever it is asked (found for v4, session 5).
`--canonical-from` scores the v4 recipe's local targets (table rebuilt as the lm stage builds it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parents[1] / "configs/pretrain/tiny_shapes.yaml"


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an exported tiny-shapes folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=120, help="scenes (a multiple of 6: the tags cycle)")
    ap.add_argument("--canonical-from", default=None, help="tokenizer folder: score local (v4) targets")
    ap.add_argument("--align", type=int, default=1, help="object grid of the scenes (the v4 recipe: 4)")
    ap.add_argument("--recipe", default=str(RECIPE),
                    help="the pretrain config whose local-code table is rebuilt (its margin, table size and seed)")
    ap.add_argument("--seed", type=int, default=77)
    args = ap.parse_args()

    from unirl_kit.backbones.config import BackboneConfig, build_backbone
    from unirl_kit.backbones.tiny_shapes import build
    from unirl_kit.pretrain.language_model import generation_loss
    from unirl_kit.pretrain.scenes import scene_batch

    backbone = build_backbone(BackboneConfig(name="tiny-shapes", model=args.model, device="cpu", dtype="auto"))
    model, tokenizer = backbone.model.eval(), build.build_tokenizer()
    pixels, specs = scene_batch(args.seed, 0, args.n, build.IMAGE_SIZE, args.align)
    tokens = model.model.vqmodel.encode(pixels).image_tokens.view(args.n, -1)
    if args.canonical_from:
        from transformers.models.janus.modeling_janus import JanusVQVAE

        from unirl_kit.config import load_config
        from unirl_kit.pretrain.canonical import build_canonical_codes, canonical_tokens
        from unirl_kit.pretrain.recipe import PretrainConfig

        recipe = load_config(PretrainConfig, Path(args.recipe), {}, [])
        vq = JanusVQVAE.from_pretrained(args.canonical_from).eval()
        table = build_canonical_codes(vq, recipe.seed, args.align, recipe.lm.canonical_margin,
                                      recipe.lm.canonical_batches)
        tokens, _ = canonical_tokens(table, pixels, tokens, recipe.lm.canonical_margin)
    keep, drop = torch.zeros(args.n, dtype=torch.bool), torch.ones(args.n, dtype=torch.bool)
    true = generation_loss(model, tokenizer, [s.prompt for s in specs], tokens, keep, per_image=True)
    other = generation_loss(model, tokenizer, [specs[(i + 6) % args.n].prompt for i in range(args.n)], tokens, keep,
                            per_image=True)
    uncond = generation_loss(model, tokenizer, [s.prompt for s in specs], tokens, drop, per_image=True)
    rows = {}
    print("| tag | NLL, true prompt | other prompt - true | no prompt - true |\n|---|---|---|---|")
    for tag in dict.fromkeys(s.tag for s in specs):
        sel = [i for i, s in enumerate(specs) if s.tag == tag]
        rows[tag] = {k: round(float(v[sel].mean()), 2) for k, v in (("true", true), ("other", other), ("none", uncond))}
        r = rows[tag]
        print(f"| {tag} | {r['true']:.1f} | {r['other'] - r['true']:+.1f} | {r['none'] - r['true']:+.1f} |")
    print(json.dumps({"model": args.model or "shipped", "canonical": bool(args.canonical_from), "per_tag": rows}))


if __name__ == "__main__":
    main()
