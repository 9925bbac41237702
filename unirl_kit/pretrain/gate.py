"""The tokenizer gate: reconstructions of held-out clean renders must still read right.

For each GenEval tag, `per_tag` fresh scenes (seeds disjoint from training) are encoded and decoded
by the tokenizer and judged by the `shapes` detector with GenEval's rules. A clean render always
scores 1.0, so the share judged correct is the detector's agreement with the ground truth. The
gate passes when every tag reaches `threshold`; a tokenizer that fails is not shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from unirl_kit.eval.geneval.colors.shapes import ShapesColorClassifier
from unirl_kit.eval.geneval.rules import RuleOptions
from unirl_kit.eval.geneval.runner import verdict_for
from unirl_kit.pretrain.scenes import to_pixels, to_uint8
from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.types import GENEVAL_TAGS
from unirl_kit.worlds.shapes.analyze import detect_shapes
from unirl_kit.worlds.shapes.render import render_scene

GATE_SEED = 7_777_777  # never a training seed: training batches draw from (seed, step) with small seeds


@torch.no_grad()
def tokenizer_gate(vq, image_size: int, per_tag: int = 100, threshold: float = 0.95,
                   batch_size: int = 50, align: int = 1,
                   retokenize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Per-tag agreement of the detector on reconstructions, and whether the gate passes.

    `align` draws the scenes on that pixel grid and `retokenize(pixels, tokens) -> tokens` replaces
    the encoder's tokens before decoding: together they check the language model's canonical targets."""
    world, rules, colors = get_world("shapes"), RuleOptions(), ShapesColorClassifier()
    scores: dict[str, float] = {}
    exact: dict[str, float] = {}
    for t, tag in enumerate(GENEVAL_TAGS):
        rng = np.random.default_rng([GATE_SEED, t])
        specs, images, truths = [], [], []
        for _ in range(per_tag):
            spec = sample_prompt(tag, world, rng)
            image, objects = render_scene(spec, rng, image_size, align=align)
            specs.append(spec)
            images.append(np.asarray(image))
            truths.append(sorted((o.cls, o.color) for o in objects))
        correct = same = 0
        for start in range(0, per_tag, batch_size):
            pixels = to_pixels(images[start:start + batch_size])
            tokens = vq.encode(pixels).image_tokens.view(pixels.shape[0], -1)
            if retokenize is not None:
                tokens = retokenize(pixels, tokens)
            recon = to_uint8(vq.decode(tokens))
            for j, rec in enumerate(recon):
                spec, truth = specs[start + j], truths[start + j]
                dets = detect_shapes(rec)
                correct += verdict_for(spec, Image.fromarray(rec), dets, colors, rules).correct
                same += sorted((d.cls, d.color) for d in dets) == truth
        scores[tag], exact[tag] = correct / per_tag, same / per_tag
    return {"passed": all(v >= threshold for v in scores.values()), "threshold": threshold,
            "per_tag": scores, "exact_objects": exact, "images_per_tag": per_tag}


