"""Image-token sampling throughput: our batched Janus sampler against transformers' own
`model.generate(generation_mode="image")`, on the same random model, prompts and batch.

Both sample with CFG 5 and temperature 1, every group of every prompt in one batch (transformers:
`num_return_sequences=K`). Timed: token sampling only (the VQ decode after it costs both the same).
Wall-clock is the headline; the process CPU-time ratio is printed too, as on a loaded machine (a job
beside the benchmark) it is far less noisy than wall-clock (meaningful on the CPU only).
Models: the tiny-shapes architecture (width 256, 4 layers, 256 image tokens, codebook 512) and a
mid-size Janus (width 512, 8 layers, 576 image tokens, codebook 16,384), both random; `--size gpu`
builds the Janus-Pro-1B shape (DeepSeek-LLM 1.5B text model, 576 tokens) with random weights on the
device and also prints the memory-bandwidth bound (weight bytes x decode steps / bandwidth).

python benchmarks/generate_throughput.py [--size smoke|small|full|batch|gpu] [--device cuda] [--dtype bfloat16]
    [--bandwidth-gbs 3350] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# (model, prompts, group size, repeats); repeats alternate the two samplers and keep each one's best
SIZES = {
    "smoke": [("tiny", 2, 2, 1)],
    "small": [("tiny", 4, 4, 1), ("mid", 2, 4, 1)],
    "full": [("tiny", 4, 8, 2), ("tiny", 8, 8, 1), ("mid", 4, 4, 1)],
    "gpu": [("pro1b", 4, 4, 2), ("pro1b", 8, 8, 2)],  # batch 16 and 64 images
    "batch": [("tiny", 1, 1, 3), ("tiny", 1, 4, 2), ("tiny", 4, 4, 2), ("tiny", 8, 8, 1)],  # 1, 4, 16, 64 images
}
PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle and a blue circle",
           "a photo of a purple diamond", "a photo of three yellow circles", "a photo of a square above a circle",
           "a photo of an orange triangle", "a photo of four diamonds"]
CFG = 5.0


def _build(kind: str, device: str, dtype: str):
    import torch

    from unirl_kit.testing.tiny_janus import MID_SIZE, random_janus

    if kind != "pro1b":
        model, processor = random_janus(**(MID_SIZE if kind == "mid" else {}))
        return model.to(device, getattr(torch, dtype)), processor
    from transformers import JanusConfig, JanusForConditionalGeneration, LlamaConfig

    from unirl_kit.backbones.tiny_shapes.build import build_processor

    text = LlamaConfig(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                       intermediate_size=5632, vocab_size=102400, max_position_embeddings=16384)
    with torch.device(device):  # random init straight on the device
        model = JanusForConditionalGeneration(JanusConfig(text_config=text)).to(getattr(torch, dtype)).eval()
    return model, build_processor()  # the word-level tokenizer's ids are valid in any larger vocabulary


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) since `start`."""
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def _time_ours(model, processor, prompts: list[str], group: int) -> tuple[float, float]:
    import torch

    from unirl_kit.backbones.base import resolve_seeds, uniform_stream
    from unirl_kit.backbones.janus_sampler import SpecialIds, sample_image_tokens

    tok = processor.tokenizer
    special = SpecialIds(tok.bos_token_id, tok.convert_tokens_to_ids(tok.boi_token), tok.pad_token_id)
    rows = [tok(p + tok.boi_token).input_ids for p in prompts for _ in range(group)]
    n_tokens = model.config.vision_config.num_image_tokens
    t0 = _clock()
    uniforms = uniform_stream(resolve_seeds(0, len(prompts), group), n_tokens)
    tokens, _ = sample_image_tokens(model, rows, special, n_tokens, CFG, 1.0, uniforms)
    seconds = _since(t0)
    assert tokens.shape == (len(rows), n_tokens) and tokens.dtype == torch.long
    return seconds


def _time_transformers(model, processor, prompts: list[str], group: int) -> tuple[float, float]:
    from transformers import GenerationConfig

    tok = processor.tokenizer
    enc = processor(text=prompts, generation_mode="image", padding=True, return_tensors="pt").to(model.device)
    config = GenerationConfig(do_sample=True, temperature=1.0, guidance_scale=CFG, num_return_sequences=group,
                              bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                              generation_kwargs={"boi_token_id": tok.convert_tokens_to_ids(tok.boi_token)})
    t0 = _clock()
    tokens = model.generate(**enc, generation_mode="image", generation_config=config).cpu()  # waits for the GPU
    seconds = _since(t0)
    assert tokens.shape[0] == len(prompts) * group
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="device memory bandwidth, for the bound")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    report: dict = {"benchmark": "generate_throughput", "size": args.size, "device": args.device,
                    "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0], "cases": []}
    models: dict = {}
    for kind, n_prompts, group, repeats in SIZES[args.size]:
        if kind not in models:
            models[kind] = _build(kind, args.device, args.dtype)
        model, processor = models[kind]
        prompts = PROMPTS[:n_prompts]
        best = {"ours": float("inf"), "transformers": float("inf")}
        cpu = dict(best)
        with torch.no_grad():
            for _ in range(repeats):
                for name, timer in (("transformers", _time_transformers), ("ours", _time_ours)):
                    wall, seconds = timer(model, processor, prompts, group)
                    best[name], cpu[name] = min(best[name], wall), min(cpu[name], seconds)
        images = n_prompts * group
        case = {"model": kind, "image_tokens": model.config.vision_config.num_image_tokens,
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "images": images,
                "ours_images_per_s": images / best["ours"], "transformers_images_per_s": images / best["transformers"],
                "ratio": best["transformers"] / best["ours"], "ours_cpu_seconds": cpu["ours"],
                "transformers_cpu_seconds": cpu["transformers"], "cpu_ratio": cpu["transformers"] / cpu["ours"]}
        if args.bandwidth_gbs:  # every decode step reads every weight at least once
            weight_bytes = sum(p.numel() * p.element_size() for p in model.model.language_model.parameters())
            bound = weight_bytes * case["image_tokens"] / (args.bandwidth_gbs * 1e9)
            case.update(weight_gb=weight_bytes / 1e9, bound_seconds_per_batch=bound,
                        ours_seconds_per_batch=best["ours"], bound_fraction=bound / best["ours"])
        report["cases"].append(case)
        print(f"{kind} ({case['params_m']}M params, {case['image_tokens']} tokens), batch {n_prompts}x{group}: "
              f"ours {case['ours_images_per_s']:.3f} images/s, transformers {case['transformers_images_per_s']:.3f} "
              f"images/s, ratio {case['ratio']:.2f}x (CPU time {case['cpu_ratio']:.2f}x)"
              + (f"; bandwidth bound {case['bound_seconds_per_batch']:.2f}s per batch = "
                 f"{case['bound_fraction']:.0%} of ours" if "bound_fraction" in case else ""), flush=True)
    report["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
