"""Continued pre-training (lm.init_from) and noisy generation captions (lm.caption_noise), issue 20."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unirl_kit.pretrain.language_model import (
    LanguageModelConfig,
    build_model,
    generation_captions,
    noisy_caption,
)
from unirl_kit.pretrain.scenes import scene_batch
from unirl_kit.pretrain.tokenizer import TokenizerConfig, build_vq
from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.types import GENEVAL_TAGS, InputError

SMALL = {"text_hidden": 64, "text_layers": 1, "vision_hidden": 32, "vision_layers": 1}


def test_noisy_caption_misstates_the_tags_own_fact():
    rng = np.random.default_rng(0)
    world = get_world("shapes")
    for tag in GENEVAL_TAGS:
        for _ in range(20):
            spec = sample_prompt(tag, world, rng)
            noisy = noisy_caption(spec, rng)
            assert noisy != spec.prompt
            words, noisy_words = spec.prompt.split(), noisy.split()
            if tag in ("counting", "colors", "position", "color_attr"):  # the shapes stay, the fact moves
                shapes = [w for w in words if w.rstrip("s") in world.classes or w in world.classes]
                assert all(any(s.rstrip("s") in w for w in noisy_words) for s in shapes), (spec.prompt, noisy)


def test_generation_captions_flip_the_configured_share_of_the_configured_tags_only():
    _, specs = scene_batch(1, 0, 600, 64)
    cfg = LanguageModelConfig(caption_noise=0.5, caption_noise_tags=["position", "colors"])
    captions = generation_captions(specs, cfg, 0, 7)
    assert captions == generation_captions(specs, cfg, 0, 7)  # deterministic per (seed, step)
    changed = {t: [c != s.prompt for s, c in zip(specs, captions, strict=True) if s.tag == t] for t in GENEVAL_TAGS}
    for tag in ("position", "colors"):
        assert 0.35 < np.mean(changed[tag]) < 0.65
    assert not any(any(changed[t]) for t in GENEVAL_TAGS if t not in ("position", "colors"))
    assert generation_captions(specs, LanguageModelConfig(), 0, 7) == [s.prompt for s in specs]


def test_init_from_an_export_loads_every_weight_but_the_vq_and_freezes_the_tower(tmp_path):
    vq_dir = tmp_path / "vq"
    build_vq(TokenizerConfig(channel_multiplier=[1, 1, 2], latent_channels=32, codebook_size=32)).save_pretrained(vq_dir)
    torch.manual_seed(1)
    source = build_model(LanguageModelConfig(**SMALL), vq_dir).to(torch.bfloat16)
    source.save_pretrained(tmp_path / "export")
    torch.manual_seed(2)
    model = build_model(LanguageModelConfig(**SMALL, init_from=str(tmp_path / "export")), vq_dir)
    theirs, mine = source.state_dict(), model.state_dict()
    for k, v in mine.items():
        if not k.startswith("model.vqmodel."):
            assert torch.equal(v, theirs[k].float()), k
    assert next(model.parameters()).dtype == torch.float32
    assert not any(p.requires_grad for p in model.model.vision_model.parameters())
    with pytest.raises(InputError, match="does not match lm's sizes"):
        build_model(LanguageModelConfig(**{**SMALL, "text_hidden": 32}, init_from=str(tmp_path / "export")), vq_dir)
    with pytest.raises(InputError, match="lm.init_from: .* not found"):
        build_model(LanguageModelConfig(**SMALL, init_from=str(tmp_path / "nowhere")), vq_dir)


def test_unknown_noise_tag_is_one_line(tmp_path):
    from unirl_kit.pretrain.recipe import PretrainConfig, run_pretrain

    cfg = PretrainConfig(out=str(tmp_path), stages=["lm"])
    cfg.lm.caption_noise_tags = ["colours"]
    with pytest.raises(InputError, match="lm.caption_noise_tags: unknown tag 'colours'"):
        run_pretrain(cfg)
