"""Does a generation recipe teach a fresh tiny-shapes generator to read its prompt? A short,
generation-only training run, with the prompt-binding gap measured as it trains.

python benchmarks/binding_probe.py [--steps 400] [--tags single_object] [--targets encoder|local]
                                   [--prompt-reading W] [--threads 1]
The gap is the held-out image tokens' NLL under another scene's prompt of the same tag minus under
their own (nats per image; `benchmarks/prompt_binding.py` measures it on finished models). A recipe
change that does not open the gap here within a few hundred steps is not worth a full run (~80 min).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "artifacts/pretrain/tiny_shapes/tokenizer/final"
RECIPE = ROOT / "configs/pretrain/tiny_shapes.yaml"  # local targets: its margin, table size and seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tags", default="single_object", help="comma-separated GenEval tags, or 'all'")
    ap.add_argument("--targets", choices=("encoder", "local"), default="encoder")
    ap.add_argument("--align", type=int, default=None, help="object grid (default: the recipe's for local targets, else 1)")
    ap.add_argument("--prompt-reading", type=float, default=0.0, help="weight of prompt_reading_loss")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-n", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default=str(TOKENIZER))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from unirl_kit.backbones.tiny_shapes import build
    from unirl_kit.config import load_config
    from unirl_kit.pretrain.canonical import build_canonical_codes, canonical_tokens
    from unirl_kit.pretrain.language_model import (
        LanguageModelConfig,
        build_model,
        generation_forward,
        prompt_reading_loss,
    )
    from unirl_kit.pretrain.recipe import PretrainConfig
    from unirl_kit.pretrain.scenes import scene_batch
    from unirl_kit.schedules import warmup_cosine
    from unirl_kit.types import GENEVAL_TAGS

    tags = list(GENEVAL_TAGS) if args.tags == "all" else args.tags.split(",")
    recipe = load_config(PretrainConfig, RECIPE, {}, [])
    margin = recipe.lm.canonical_margin
    align = args.align or (recipe.lm.gen_align if args.targets == "local" else 1)
    cfg = LanguageModelConfig(lr=args.lr, steps=args.steps, warmup_steps=min(100, args.steps // 4))
    model = build_model(cfg, Path(args.tokenizer)).train()
    model.model.vqmodel.eval()
    tokenizer = build.build_tokenizer()
    table = (build_canonical_codes(model.model.vqmodel, recipe.seed, align, margin, recipe.lm.canonical_batches)
             if args.targets == "local" else None)

    def encode(pixels):
        with torch.no_grad():
            tokens = model.model.vqmodel.encode(pixels).image_tokens.view(pixels.shape[0], -1)
        return canonical_tokens(table, pixels, tokens, margin)[0] if table is not None else tokens

    held_pixels, held_specs = scene_batch(args.seed + 999, 0, args.eval_n, build.IMAGE_SIZE, align, tags)
    held_tokens = encode(held_pixels)
    keep = torch.zeros(args.eval_n, dtype=torch.bool)

    @torch.no_grad()
    def gap() -> float:
        model.eval()
        true = generation_forward(model, tokenizer, [s.prompt for s in held_specs], held_tokens, keep)[0].sum(1)
        others = [held_specs[(i + len(tags)) % args.eval_n].prompt for i in range(args.eval_n)]
        other = generation_forward(model, tokenizer, others, held_tokens, keep)[0].sum(1)
        model.train()
        return float((other - true).mean())

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    t0, history = time.perf_counter(), []
    for step in range(args.steps):
        pixels, specs = scene_batch(args.seed + 1_000, step, args.batch, build.IMAGE_SIZE, align, tags)
        tokens = encode(pixels)
        rng = np.random.default_rng([args.seed, 1, step])
        uncond = torch.from_numpy(rng.random(args.batch) < cfg.cfg_dropout)
        prompts = [s.prompt for s in specs]
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, floor=0.05)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nll, hidden = generation_forward(model, tokenizer, prompts, tokens, uncond)
            loss = nll.mean()
            if args.prompt_reading:
                read = prompt_reading_loss(model, tokenizer, prompts, hidden, uncond)
                loss = loss + args.prompt_reading * read
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if (step + 1) % args.eval_every == 0:
            row = {"step": step + 1, "gen_loss": round(float(nll.mean()), 3), "gap": round(gap(), 2),
                   "elapsed_s": round(time.perf_counter() - t0)}
            if args.prompt_reading:
                row["read_loss"] = round(float(read), 3)
            history.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "tokenizer"},
                      "history": history}, default=str))


if __name__ == "__main__":
    main()
