"""tiny-shapes v4's generation targets: objects on the token grid, and local (canonical) image tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unirl_kit.pretrain.canonical import build_canonical_codes, canonical_tokens, window_keys
from unirl_kit.pretrain.gate import tokenizer_gate
from unirl_kit.pretrain.scenes import scene_batch_with_objects, to_pixels
from unirl_kit.pretrain.tokenizer import TokenizerConfig, build_vq
from unirl_kit.prompts.generate import get_world, sample_prompt
from unirl_kit.types import InputError
from unirl_kit.worlds.shapes.geometry import place_mask
from unirl_kit.worlds.shapes.render import render_scene
from unirl_kit.worlds.shapes.vocab import BACKGROUND, PALETTE

VQ = dict(channel_multiplier=[1, 1, 2], latent_channels=32, codebook_size=32)  # 4x: 16x16 tokens of 64x64


@pytest.fixture(scope="module")
def vq():
    torch.manual_seed(0)
    return build_vq(TokenizerConfig(**VQ)).eval()


def test_align_puts_objects_on_the_grid_and_align_1_is_the_old_world():
    _, _, objects = scene_batch_with_objects(0, 3, 12, 64, align=4)
    boxes = [o.box for objs in objects for o in objs]
    assert len(boxes) > 12 and all(b[0] % 4 == 0 and b[1] % 4 == 0 and b[0] >= 4 and b[1] >= 4 for b in boxes)
    assert all(b[2] <= 64 and b[3] <= 64 for b in boxes)
    spec = sample_prompt("position", get_world("shapes"), np.random.default_rng(1))
    old, old_objs = render_scene(spec, np.random.default_rng(5), 64)
    new, new_objs = render_scene(spec, np.random.default_rng(5), 64, align=1)
    assert np.array_equal(np.asarray(old), np.asarray(new)) and old_objs == new_objs
    with pytest.raises(InputError, match="align: must be at least 1"):
        render_scene(spec, np.random.default_rng(5), 64, align=0)


def _one_object(x: int, y: int, side: int = 17) -> np.ndarray:
    canvas = np.empty((64, 64, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    canvas[place_mask("cross", (x, y, x + side, y + side), (64, 64))] = PALETTE["red"]
    return canvas


def test_window_keys_make_a_shape_the_same_tokens_wherever_it_sits_on_the_grid():
    a, b = window_keys(np.stack([_one_object(8, 12), _one_object(28, 32)]), margin=2)
    grid = lambda keys, i, j: keys[16 * i + j]  # noqa: E731
    assert all(grid(a, i, j) == grid(b, i + 5, j + 5) for i in range(1, 8) for j in range(1, 8))
    background = grid(a, 15, 0)
    assert sum(k == background for k in a) > 150  # every empty window, borders included, is one key
    shifted = window_keys(_one_object(10, 12)[None], margin=2)[0]  # 2 px off the grid: other windows
    assert shifted[16 * 5 + 4] != grid(a, 5, 4) and grid(a, 5, 4) != background


def test_canonical_tokens_are_the_tables_codes_and_the_table_is_deterministic(vq):
    table = build_canonical_codes(vq, seed=0, align=4, margin=1, batches=2, batch_size=6)
    assert table == build_canonical_codes(vq, seed=0, align=4, margin=1, batches=2, batch_size=6)
    assert set(table.values()) <= set(range(32))
    pixels = to_pixels([_one_object(8, 12), np.full((64, 64, 3), 255, dtype=np.uint8)])
    with torch.no_grad():
        tokens = vq.encode(pixels).image_tokens.view(2, -1)
    out, known = canonical_tokens(table, pixels, tokens, margin=1)
    keys = window_keys(np.stack([_one_object(8, 12), np.full((64, 64, 3), 255, dtype=np.uint8)]), margin=1)
    for b in range(2):
        for k, key in enumerate(keys[b]):
            assert out[b, k] == (table[key] if key in table else tokens[b, k])
    assert 0 < known < 1  # the white image's windows are in no scene: the encoder's codes stay
    assert torch.equal(out[1], tokens[1])


def test_gate_can_check_retokenized_aligned_scenes(vq):
    seen = []

    def retokenize(pixels, tokens):
        seen.append(pixels)
        return torch.zeros_like(tokens)

    gate = tokenizer_gate(vq, 64, per_tag=2, batch_size=2, align=4, retokenize=retokenize)
    assert [p.shape[0] for p in seen] == [2] * 6 and gate["passed"] is False
    aligned, seen[:] = list(seen), []
    tokenizer_gate(vq, 64, per_tag=2, batch_size=2, align=1, retokenize=lambda p, t: seen.append(p) or t)
    assert not all(torch.equal(a, b) for a, b in zip(aligned, seen, strict=True))  # align reached the scenes


def test_lm_stage_trains_on_canonical_targets_and_reports_their_gate(tmp_path):
    """The v5 recipe's options end to end at toy size: local targets, the prompt-reading loss (logged),
    and an export whose generation_config carries the guidance the backbone then samples with."""
    from unirl_kit.pretrain.export import export_model
    from unirl_kit.pretrain.language_model import LanguageModelConfig, train_language_model
    from unirl_kit.registry import registry

    vq_dir = tmp_path / "vq"
    build_vq(TokenizerConfig(**VQ)).save_pretrained(vq_dir)
    cfg = LanguageModelConfig(steps=1, gen_batch=2, und_batch=2, text_hidden=64, text_layers=1, vision_hidden=32,
                              vision_layers=1, pretrained_vision=False, canonical_margin=2, canonical_batches=1,
                              gen_align=4, prompt_reading=0.5, bf16=False, log_every=1)
    train_language_model(cfg, vq_dir, tmp_path / "lm")
    report = json.loads((tmp_path / "lm/canonical.json").read_text())
    assert report["margin"] == 2 and report["align"] == 4 and report["windows"] > 0
    assert set(report["gate"]["per_tag"]) == {"single_object", "two_object", "counting", "colors", "position",
                                              "color_attr"}
    log = [json.loads(x) for x in (tmp_path / "lm/log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1] and log[0]["read_loss"] > 0
    export_model(tmp_path / "lm", vq_dir, cfg, tmp_path / "export", guidance_scale=1.0)
    backbone = registry("backbones").build("janus", model=str(tmp_path / "export"), device="cpu")
    assert backbone.default_cfg_scale == 1.0
