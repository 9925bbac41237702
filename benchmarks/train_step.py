"""One GRPO step on tiny-shapes split into generate / score / update, the teacher-forced log-prob pass
against recomputing the log-probs token by token (KV cache, the given tokens fed back), and peak memory.

python benchmarks/train_step.py [--size smoke|small|full] [--device cpu|cuda] [--json OUT]
Sizes are prompts x group size: smoke 1x2, small 2x4, full 4x4. Both log-prob paths run on the same
tokens in the same process; their results are checked equal (1e-4) before the ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

SIZES = {"smoke": (1, 2), "small": (2, 4), "full": (4, 4)}


def per_token_logprobs(backbone, prompts: list[str], tokens, cfg_scale: float):
    """The slow way: one decode step per token with a KV cache, feeding the given tokens back."""
    import torch

    from unirl_kit.backbones.janus_sampler import buffer_cache, guidance_rows, guided_scores

    model = backbone.model
    rows = guidance_rows(backbone.prompt_ids(prompts), backbone.special, cfg_scale, model.device)
    n, (r, width) = rows.n, rows.ids.shape
    lm, head = model.model.language_model, model.model.generation_head
    steps = tokens.shape[1]
    cache = buffer_cache(model.config.text_config.num_hidden_layers, width + steps)
    mask = None if rows.mask is None else torch.cat([rows.mask, rows.mask.new_ones(r, steps)], dim=1)
    hidden = lm(inputs_embeds=model.get_input_embeddings()(rows.ids), attention_mask=rows.mask,
                position_ids=rows.positions, cache=cache, use_cache=True).last_hidden_state[:, -1]
    out = torch.empty(n, steps)
    for t in range(steps):
        scores = guided_scores(head(hidden), n, cfg_scale, 1.0)
        out[:, t] = scores.log_softmax(-1).gather(-1, tokens[:, t:t + 1]).squeeze(-1)
        if t + 1 == steps:
            break
        emb = model.prepare_embeddings_for_image_generation(tokens[:, t].repeat(r // n)[:, None])
        hidden = lm(inputs_embeds=emb, attention_mask=None if mask is None else mask[:, : width + t + 1],
                    position_ids=rows.positions[:, -1:] + 1 + t, cache=cache, use_cache=True).last_hidden_state[:, -1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from unirl_kit.backbones.base import resolve_cfg_scale
    from unirl_kit.config import load_config
    from unirl_kit.prompts.cmd import PromptsConfig, run_prompts
    from unirl_kit.rewards.base import build_rewards
    from unirl_kit.training.common import build_optimizer, build_policy
    from unirl_kit.training.config import GRPOConfig
    from unirl_kit.training.grpo import train_step

    n_prompts, group = SIZES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "p.jsonl"
        run_prompts(PromptsConfig(n=24, seed=9, out=str(prompts)))
        cfg = load_config(GRPOConfig, None, {}, [f"prompts={prompts}", f"prompts_per_step={n_prompts}",
                                                 f"group_size={group}", f"backbone.device={args.device}",
                                                 f"run.out={tmp}/run", "optim.micro_batch=16"])
        from unirl_kit.prompts.schema import read_prompts

        pool = read_prompts(prompts)
    policy = build_policy(cfg.backbone, cfg.lora, keep_reference=False)
    reward = build_rewards(cfg.rewards, {}, policy.backbone)
    optimizer = build_optimizer(policy.params, cfg.optim)
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows = [train_step(policy, optimizer, reward, pool, step, cfg, 0, 1) for step in range(2)]
    step = rows[-1]  # the second step: no first-call warm-up in it
    scale = resolve_cfg_scale(policy.backbone, cfg.sampling.cfg_scale)  # the weights' own when the config says null
    batch = policy.backbone.generate([pool[0].prompt], group_size=group, seeds=0, cfg_scale=scale)
    prompts_list = [pool[0].prompt]
    with torch.no_grad():
        t0 = time.perf_counter()
        forced = policy.backbone.image_logprobs(prompts_list, batch.tokens, scale)
        t_forced = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = per_token_logprobs(policy.backbone, [pool[0].prompt] * group, batch.tokens.to(policy.backbone.device),
                                  scale)
        t_slow = time.perf_counter() - t0
    err = float((forced.cpu() - slow).abs().max())
    assert err < 1e-4, f"teacher-forced and per-token log-probs differ by {err}"
    peak = (torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result = {"size": args.size, "device": args.device, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "images_per_step": n_prompts * group, "time": {k[5:]: v for k, v in step.items() if k.startswith("time/")},
              "images_per_s": step["images_per_s"], "teacher_forced_s": round(t_forced, 4),
              "per_token_s": round(t_slow, 4), "per_token_over_teacher_forced": round(t_slow / t_forced, 2),
              "max_abs_diff": err, "peak_memory_mb": round(peak, 1),
              "peak_memory_kind": "cuda max allocated" if args.device.startswith("cuda") else "process max RSS"}
    print(f"GRPO step ({n_prompts}x{group} images, {args.device}): generate {result['time']['generate']:.2f}s, "
          f"score {result['time']['score']:.2f}s, update {result['time']['update']:.2f}s; "
          f"log-probs of {group} images: teacher-forced {t_forced:.3f}s vs per token {t_slow:.3f}s = "
          f"{result['per_token_over_teacher_forced']}x; peak {result['peak_memory_mb']} MB ({result['peak_memory_kind']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
