"""Stage 3 of tiny-shapes: pre-train the understanding tower before the language model reads it.

Why: Janus reads images through SigLIP, pre-trained apart from the language model. Trained from
scratch inside the language model, the tiny ViT learnt colour (a linear function of one 8x8 patch)
but named shapes barely above chance after 4,000 steps: a shape seen through non-overlapping patches
is a non-linear function of several patches and of where the patch grid cuts the object. Alone,
with a direct label, the same tower learns it in a few thousand cheap steps (a ViT's slow start,
then a quick rise). The labels: each object's shape and colour, read by linear heads (thrown away afterwards) from
the mean of the tower's features over the patches the object covers, weighted by its mask. The
colour label is easy; it is there so that the frozen tower keeps colour: with the shape label alone
the language model read colours at 0.23 (chance 0.17) at step 1,000 (v1 read them at 1.00).
Labels on objects, not images, hold in every scene (one object or four) and teach the tower
what the language model then needs: the shape at the place where the object is. A first try that
predicted per-image counts of each shape and colour from the mean over all patches learnt colour but
reached only 0.17 on shapes in 4,000 steps.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unirl_kit.backbones.tiny_shapes import build
from unirl_kit.checkpoint import save_checkpoint
from unirl_kit.jsonl import write_atomic
from unirl_kit.pretrain.scenes import scene_batch_with_objects
from unirl_kit.pretrain.tokenizer import open_log, resume
from unirl_kit.schedules import warmup_cosine
from unirl_kit.worlds.shapes.render import PlacedObject, place_mask
from unirl_kit.worlds.shapes.vocab import COLORS, SHAPES


@dataclass
class VisionConfig:
    steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    eval_images: int = 300
    device: str = "cpu"
    checkpoint_every: int = 500
    log_every: int = 50


class VisionPretrainer(nn.Module):
    """The tower being trained plus its throw-away shape and colour heads."""

    def __init__(self, vision_hidden: int, vision_layers: int, text_hidden: int):
        super().__init__()
        from transformers.models.janus.modeling_janus import JanusVisionModel

        self.tower = JanusVisionModel(build.vision_config(vision_hidden, vision_layers, text_hidden))
        self.shape_head = nn.Linear(vision_hidden, len(SHAPES))
        self.color_head = nn.Linear(vision_hidden, len(COLORS))

    def forward(self, pixels: torch.Tensor, image_index: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape and colour logits of each object, from its mask-weighted mean of the patch features."""
        features = self.tower(pixel_values=pixels).last_hidden_state  # B x patches x hidden
        pooled = torch.einsum("op,oph->oh", weights, features[image_index])
        return self.shape_head(pooled), self.color_head(pooled)


def object_targets(objects: list[list[PlacedObject]],
                   size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per object: its image's index, its share of mask pixels in each vision patch, its shape, its colour."""
    grid = size // build.VISION_PATCH
    index, weights, labels, colors = [], [], [], []
    for i, placed in enumerate(objects):
        for obj in placed:
            mask = place_mask(obj.cls, obj.box, (size, size)).astype(np.float32)
            per_patch = mask.reshape(grid, build.VISION_PATCH, grid, build.VISION_PATCH).sum((1, 3)).reshape(-1)
            index.append(i)
            weights.append(per_patch / per_patch.sum())
            labels.append(SHAPES.index(obj.cls))
            colors.append(COLORS.index(obj.color))
    return torch.tensor(index), torch.from_numpy(np.stack(weights)), torch.tensor(labels), torch.tensor(colors)


def evaluate_tower(net: VisionPretrainer, seed: int, n: int, device: torch.device) -> dict:
    """Held-out scenes (all six tags): share of objects whose shape (and colour) the heads name right."""
    pixels, specs, objects = scene_batch_with_objects(seed + 9_000, 0, n, build.IMAGE_SIZE)
    index, weights, labels, colors = object_targets(objects, build.IMAGE_SIZE)
    with torch.no_grad():
        shape_logits, color_logits = net.eval()(pixels.to(device), index.to(device), weights.to(device))
    pred, color_pred = shape_logits.argmax(-1).cpu(), color_logits.argmax(-1).cpu()
    net.train()
    per_tag: dict[str, list[bool]] = {}
    for i, ok in zip(index.tolist(), (pred == labels).tolist(), strict=True):
        per_tag.setdefault(specs[i].tag, []).append(ok)
    return {"shape_accuracy": (pred == labels).float().mean().item(),
            "color_accuracy": (color_pred == colors).float().mean().item(),
            "shape_accuracy_per_tag": {t: round(sum(v) / len(v), 4) for t, v in per_tag.items()},
            "images": n, "objects": len(labels)}


def train_vision(cfg: VisionConfig, out: Path, vision_hidden: int, vision_layers: int, text_hidden: int,
                 seed: int = 0) -> dict:
    """Train (or resume) in `out`; writes out/final/model.safetensors (the tower) and out/metrics.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    device = torch.device(cfg.device)
    net = VisionPretrainer(vision_hidden, vision_layers, text_hidden).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    start, _ = resume(out, net, opt)
    log = open_log(out / "log.jsonl", start)
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        pixels, _, objects = scene_batch_with_objects(seed + 3_000, step, cfg.batch_size, build.IMAGE_SIZE)
        index, weights, labels, colors = (t.to(device) for t in object_targets(objects, build.IMAGE_SIZE))
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, floor=0.05)
        shape_logits, color_logits = net(pixels.to(device), index, weights)
        loss = F.cross_entropy(shape_logits, labels) + F.cross_entropy(color_logits, colors)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0:
            log.write(json.dumps({"step": step + 1, "loss": loss.item(),
                                  "elapsed_s": round(time.perf_counter() - t0, 1)}) + "\n")
            log.flush()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(out / "checkpoints", step + 1, net, {"optimizer": opt.state_dict()})
    log.close()
    metrics = evaluate_tower(net, seed, cfg.eval_images, device)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    net.tower.save_pretrained(out / "final")
    return metrics
