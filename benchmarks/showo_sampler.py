"""Show-o's MaskGIT sampler (images/s over steps x batch) and the cost of its policy-gradient log-probs:
the teacher-forced trajectory (the sampler's own probabilities, one forward per decoding step) against
the one-pass estimate (one forward with random masking), forward + backward, side by side.

Models, random weights: `mid` (phi width 512, 8 layers, 256 image tokens = 256 px, codebook 8,192) on
the CPU; `--size gpu` builds the real Show-o 512 shape (phi-1.5, 1,024 tokens) in bf16 on the device
and adds one GRPO update's time and peak memory (group 3 x 4 prompts: trajectory log-probs with
gradient checkpointing, backward, AdamW step). Timed: token sampling only (the MAGVIT decode after
it costs every variant the same).

python benchmarks/showo_sampler.py [--size smoke|small|gpu] [--device cuda] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# (model, timesteps, batch)
SIZES = {
    "smoke": [("tiny", 4, 2)],
    "small": [("mid", 8, 4)],  # batch 16 x 18 steps ran out of memory on a 2-core box (trajectory graphs)
    "gpu": [("showo512", 50, 8), ("showo512", 50, 32)],
}
PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle and a blue circle",
           "a photo of a purple diamond"]
CFG = 4.0  # Show-o's demo guidance w = 3


def _build(kind: str, device: str, dtype: str):
    import torch

    from unirl_kit.backbones.showo.model import PHI_1_5, Showo, ShowoConfig

    if kind == "showo512":
        cfg = ShowoConfig(num_vq_tokens=1024)
    else:
        width, layers, tokens, codes = (512, 8, 256, 8192) if kind == "mid" else (64, 2, 16, 64)
        llm = {**PHI_1_5, "hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
               "num_attention_heads": 8, "num_key_value_heads": 8}
        cfg = ShowoConfig(vocab_size=1000 + 10 + codes + 1, llm_vocab_size=1000, codebook_size=codes,
                          num_vq_tokens=tokens, llm_config=llm)
    torch.manual_seed(0)
    with torch.device(device):
        model = Showo(cfg).to(getattr(torch, dtype)).eval()
    return model


def _rows(model, batch: int, cfg_scale: float):
    from unirl_kit.backbones.showo.prompting import SpecialIds, t2i_attention_mask, t2i_rows

    c = model.config
    special = SpecialIds.showo(c.llm_vocab_size, endoftext=1)
    prompt_ids = [[2 + (7 * i + j) % 900 for j in range(6 + i % 4)] for i in range(batch)]  # word ids < 1000
    rows = t2i_rows(prompt_ids, special, c.num_vq_tokens, c.mask_token_id, cfg_scale != 1.0)
    return rows, t2i_attention_mask(rows, special)


def _sample(model, steps: int, batch: int):
    from unirl_kit.backbones.base import uniform_stream
    from unirl_kit.backbones.showo.maskgit import maskgit_uniform_count, sample_maskgit

    c = model.config
    rows, mask = _rows(model, batch, CFG)
    uniforms = uniform_stream(list(range(batch)), maskgit_uniform_count(c.num_vq_tokens, steps))
    return rows, mask, sample_maskgit(model, rows, mask, c.num_vq_tokens, c.image_token_offset, c.codebook_size,
                                      c.mask_token_id, steps, CFG, 1.0, uniforms)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _logprob_costs(model, rows, mask, codes, step_of, device: str) -> dict:
    """Forward + backward seconds: trajectory (exact) vs one pass (estimate)."""
    from unirl_kit.backbones.base import uniform_stream
    from unirl_kit.backbones.showo.maskgit import one_pass_logprobs, trajectory_logprobs

    c = model.config
    out = {}
    for name in ("trajectory", "one_pass"):
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        if name == "trajectory":
            lp = trajectory_logprobs(model, rows, mask, codes, step_of, c.image_token_offset, c.codebook_size,
                                     c.mask_token_id, CFG, 1.0)
        else:
            u = uniform_stream(list(range(codes.shape[0])), codes.shape[1] + 1)
            lp, _ = one_pass_logprobs(model, rows, mask, codes, c.image_token_offset, c.codebook_size,
                                      c.mask_token_id, CFG, 1.0, u)
        lp.float().sum().backward()
        _sync(device)
        out[name] = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return out


def _grpo_update(model, steps: int, device: str) -> dict:
    """One update on 4 prompts x group 3: sample, trajectory log-probs with checkpointing, AdamW."""
    import torch

    model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rows, mask, (codes, step_of, _) = _sample(model, steps, 12)
    t_gen = time.perf_counter() - t0
    costs = _logprob_costs(model, rows, mask, codes, step_of, device)
    opt.step()
    _sync(device)
    return {"images": 12, "generate_s": round(t_gen, 2), "update_s": round(time.perf_counter() - t0 - t_gen, 2),
            "trajectory_fwd_bwd_s": round(costs["trajectory"], 2),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dtype = args.dtype or ("bfloat16" if args.size == "gpu" else "float32")
    results, models = [], {}
    for kind, steps, batch in SIZES[args.size]:
        model = models.setdefault(kind, _build(kind, args.device, dtype))
        _sample(model, 2, 1)  # warm-up
        _sync(args.device)
        t0 = time.perf_counter()
        rows, mask, (codes, step_of, _) = _sample(model, steps, batch)
        _sync(args.device)
        seconds = time.perf_counter() - t0
        row = {"model": kind, "timesteps": steps, "batch": batch, "tokens": model.config.num_vq_tokens,
               "images_per_s": round(batch / seconds, 3), "seconds": round(seconds, 2)}
        if args.size != "gpu":
            costs = _logprob_costs(model, rows, mask, codes, step_of, args.device)
            row.update({f"{k}_fwd_bwd_s": round(v, 3) for k, v in costs.items()},
                       trajectory_over_one_pass=round(costs["trajectory"] / costs["one_pass"], 2))
        results.append(row)
        print(json.dumps(row), flush=True)
    report = {"size": args.size, "device": args.device, "dtype": dtype, "rows": results}
    if args.size == "gpu":
        report["grpo_update"] = _grpo_update(models["showo512"], 50, args.device)
        print(json.dumps(report["grpo_update"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
