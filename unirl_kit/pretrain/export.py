"""Export the trained tiny-shapes model as an HF-style directory small enough to ship in the package."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from unirl_kit.backbones.tiny_shapes import build
from unirl_kit.checkpoint import latest_checkpoint, load_latest
from unirl_kit.pretrain.language_model import LanguageModelConfig, build_model
from unirl_kit.types import InputError

MAX_BYTES = 20 * 1024 * 1024


def export_model(lm_dir: Path, vq_dir: Path, cfg: LanguageModelConfig, target: Path,
                 guidance_scale: float | None = None) -> dict:
    """Latest LM checkpoint -> target/{config.json, model.safetensors (bf16), tokenizer, processor}, and
    `guidance_scale` (when given) into generation_config.json, where `resolve_cfg_scale` reads it."""
    if latest_checkpoint(Path(lm_dir) / "checkpoints") is None:
        raise InputError(f"{lm_dir}: no language-model checkpoint to export; run the lm stage first")
    model = build_model(dataclasses.replace(cfg, init_from=None), vq_dir)  # the checkpoint holds every weight
    state = load_latest(Path(lm_dir) / "checkpoints", model)
    model = model.to(torch.bfloat16)  # halves the size; loaded back in fp32 on the CPU
    if guidance_scale is not None:
        model.generation_config.guidance_scale = float(guidance_scale)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    build.build_processor().save_pretrained(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    if size > MAX_BYTES:
        raise InputError(f"{target}: export is {size / 2**20:.1f} MB, over the 20 MB budget; shrink the model")
    return {"dir": str(target), "step": int(state["step"]), "megabytes": round(size / 2**20, 2)}
