"""The vision stage of the tiny-shapes recipe: labels, exact resume, and the language model's use of it."""

from __future__ import annotations

import json

import pytest
import torch

from unirl_kit.pretrain.scenes import scene_batch, scene_batch_with_objects
from unirl_kit.pretrain.tokenizer import TokenizerConfig, build_vq
from unirl_kit.pretrain.vision import VisionConfig, object_targets, train_vision
from unirl_kit.worlds.shapes.render import PlacedObject
from unirl_kit.worlds.shapes.vocab import COLORS, SHAPES

TINY = {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 64}


def test_object_targets_weigh_the_patches_each_object_covers():
    from unirl_kit.backbones.tiny_shapes import build

    scene = [PlacedObject("square", "red", (0, 0, 8, 8), 0), PlacedObject("circle", "blue", (20, 4, 37, 21), 1)]
    index, weights, labels, colors = object_targets([[], scene], 64)
    assert index.tolist() == [1, 1] and labels.tolist() == [SHAPES.index("square"), SHAPES.index("circle")]
    assert colors.tolist() == [COLORS.index("red"), COLORS.index("blue")]
    assert weights.shape == (2, (64 // build.VISION_PATCH) ** 2)
    assert torch.allclose(weights.sum(1), torch.ones(2))
    assert weights[0, 0] == 1  # an 8x8 square in the top-left patch: all its pixels there
    covered = (weights[1] > 0).nonzero().flatten().tolist()  # x 20..36, y 4..20: patch columns 2-4, rows 0-2
    assert covered == [r * 8 + c for r in range(3) for c in range(2, 5)]


def test_scene_batch_with_objects_is_scene_batch_plus_its_objects():
    pixels, specs = scene_batch(3, 5, 6, 64)
    pixels2, specs2, objects = scene_batch_with_objects(3, 5, 6, 64)
    assert torch.equal(pixels, pixels2) and specs == specs2
    for spec, placed in zip(specs, objects, strict=True):
        assert sorted(o.cls for o in placed) == sorted(r.cls for r in spec.include for _ in range(r.count))


def test_vision_resume_is_exact_and_the_tower_is_saved(tmp_path):
    """4 steps straight == 2 steps, a kill, then a resumed run to 4 (inside the warmup: same lrs)."""
    cfg = {"batch_size": 4, "warmup_steps": 10, "eval_images": 6, "checkpoint_every": 1, "log_every": 1}
    train_vision(VisionConfig(steps=4, **cfg), tmp_path / "a", **TINY)
    train_vision(VisionConfig(steps=2, **cfg), tmp_path / "b", **TINY)
    metrics = train_vision(VisionConfig(steps=4, **cfg), tmp_path / "b", **TINY)
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / d / "final/model.safetensors") for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert 0 <= metrics["color_accuracy"] <= 1
    assert set(metrics["shape_accuracy_per_tag"]) <= {"single_object", "two_object", "counting", "colors",
                                                          "position", "color_attr"}
    assert json.loads((tmp_path / "b/metrics.json").read_text()) == metrics


def test_language_model_starts_from_the_vision_tower_and_keeps_it_fixed(tmp_path):
    from transformers.models.janus.modeling_janus import JanusVisionModel

    from unirl_kit.pretrain.language_model import LanguageModelConfig, build_model

    vq_dir = tmp_path / "vq"
    build_vq(TokenizerConfig(channel_multiplier=[1, 1, 2], latent_channels=32, codebook_size=32)).save_pretrained(vq_dir)
    train_vision(VisionConfig(steps=1, batch_size=2, eval_images=2), tmp_path / "vision", **TINY)
    tower = JanusVisionModel.from_pretrained(tmp_path / "vision/final").state_dict()
    cfg = LanguageModelConfig(text_hidden=64, text_layers=1, vision_hidden=32, vision_layers=1)
    model = build_model(cfg, vq_dir, tmp_path / "vision/final")
    mine = model.model.vision_model.state_dict()
    assert all(torch.equal(mine[k], tower[k]) for k in tower)
    assert not any(p.requires_grad for p in model.model.vision_model.parameters())
    assert all(p.requires_grad for p in model.model.aligner.parameters())
    unfrozen = build_model(LanguageModelConfig(**{**cfg.__dict__, "freeze_vision": False}), vq_dir,
                           tmp_path / "vision/final")
    assert all(p.requires_grad for p in unfrozen.model.vision_model.parameters())


def test_lm_stage_without_a_vision_tower_says_which_stage_to_run(tmp_path):
    from unirl_kit.pretrain.recipe import PretrainConfig, run_pretrain
    from unirl_kit.types import InputError

    tok = tmp_path / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "gate.json").write_text(json.dumps({"passed": True}))
    with pytest.raises(InputError, match="run the vision stage first"):
        run_pretrain(PretrainConfig(out=str(tmp_path), stages=["lm"]))
