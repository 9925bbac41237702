"""The shipped tiny-shapes model: loads with no path, its grids are decoupled right, its tokenizer
still passes the gate's check on fresh scenes, and its understanding beats chance on colours."""

from __future__ import annotations

import numpy as np
import pytest

from unirl_kit.backbones.tiny_shapes import build


@pytest.fixture(scope="module")
def tiny():
    from unirl_kit.registry import registry

    return registry("backbones").build("tiny-shapes", device="cpu")


def test_loads_from_the_package_with_decoupled_grids(tiny):
    from unirl_kit.backbones.tiny_shapes.backbone import WEIGHTS_DIR

    size = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir())
    assert size <= 20 * 2**20  # the budget
    assert tiny.image_size == 64 and tiny.num_image_tokens == build.NUM_IMAGE_TOKENS == 256
    assert list(tiny.model.model.vqmodel.quantize.quant_state_dims) == [16, 16]  # VQ grid, not the 8x8 patches
    assert tiny.processor.num_image_tokens == build.NUM_UND_FEATURES == 64


def test_tokenizer_reconstructions_pass_the_detector(tiny):
    """decode(encode(clean render)) is judged as the clean render is (the gate's property), 12 scenes."""
    from PIL import Image

    from unirl_kit.eval.geneval.colors.shapes import ShapesColorClassifier
    from unirl_kit.eval.geneval.detectors.shapes import ShapesDetector
    from unirl_kit.eval.geneval.rules import RuleOptions
    from unirl_kit.eval.geneval.runner import verdict_for
    from unirl_kit.prompts.generate import get_world, sample_prompt
    from unirl_kit.types import GENEVAL_TAGS
    from unirl_kit.worlds.shapes.render import render_scene

    rng, world = np.random.default_rng(11), get_world("shapes")
    specs = [sample_prompt(GENEVAL_TAGS[i % 6], world, rng) for i in range(12)]
    images = [Image.fromarray(np.asarray(render_scene(s, rng, 64)[0])) for s in specs]
    recon = tiny.decode_tokens(tiny.encode_images(images))
    detector, colors = ShapesDetector(), ShapesColorClassifier()
    detections = detector.detect(recon, [f"{i}.png" for i in range(12)])
    right = [verdict_for(s, im, d, colors, RuleOptions()).correct for s, im, d in zip(specs, recon, detections, strict=True)]
    assert sum(right) >= 11, right


def test_answers_colours_of_clean_renders(tiny):
    from unirl_kit.eval.understanding.clean import clean_render_accuracy

    result = clean_render_accuracy(tiny, per_tag=4, seed=3)
    assert result["accuracy"]["colors"] >= 0.75  # 1.00 at 50 per type (benchmarks/README.md)
