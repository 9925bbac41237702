"""mmdet Mask2Former -> transformers conversion, without mmdet: a tiny random transformers model is
turned into mmdet-layout state dicts by the inverse mapping and converted back. The real parity with
mmdet's own model lives in tests/test_mmdet_convert_parity.py (`nox -s mmdet`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from unirl_kit.cli import app
from unirl_kit.convert import mask2former_keys as keys
from unirl_kit.convert.mmdet_mask2former import convert_checkpoint, convert_state_dict, fill_model
from unirl_kit.eval.geneval.detectors.mask2former import Mask2FormerDetector
from unirl_kit.testing import save_tiny_mask2former
from unirl_kit.types import InputError

DOC = Path(__file__).resolve().parents[1] / "docs" / "mmdet_conversion.md"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    from transformers import Mask2FormerForUniversalSegmentation

    path = save_tiny_mask2former(tmp_path_factory.mktemp("tiny") / "hf", seed=3)
    return path, Mask2FormerForUniversalSegmentation.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def mm3(tiny) -> dict[str, torch.Tensor]:
    return keys.to_mmdet3(tiny[1])


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("layout", ["3.x", "2.x"])
def test_mmdet_layouts_convert_back_to_the_same_weights(tiny, mm3, layout):
    source = mm3 if layout == "3.x" else {keys.rename_3x_to_2x(k): v for k, v in mm3.items()}
    assert keys.layout(source) == layout
    conv = convert_state_dict(source)
    assert conv.layout == layout and len(conv.unused) == 4  # one index buffer per Swin block (1+1+1+1)
    _assert_same(fill_model(conv).state_dict(), tiny[1])
    cfg = conv.config
    assert (cfg.num_queries, cfg.num_labels, cfg.hidden_dim, cfg.decoder_layers, cfg.num_attention_heads) == (
        10, 80, 32, 2, 2)
    assert cfg.backbone_config.depths == [1, 1, 1, 1] and cfg.backbone_config.num_heads == [1, 1, 2, 2]


def test_the_documented_2x_renaming():
    pd, td = "panoptic_head.pixel_decoder.encoder.layers.", "panoptic_head.transformer_decoder.layers."
    pairs = {
        pd + "5.attentions.0.sampling_offsets.weight": pd + "5.self_attn.sampling_offsets.weight",
        pd + "0.ffns.0.layers.0.0.bias": pd + "0.ffn.layers.0.0.bias",
        pd + "2.norms.1.weight": pd + "2.norms.1.weight",
        td + "8.attentions.0.attn.in_proj_weight": td + "8.cross_attn.attn.in_proj_weight",
        td + "3.attentions.1.attn.out_proj.bias": td + "3.self_attn.attn.out_proj.bias",
        td + "0.ffns.0.layers.1.weight": td + "0.ffn.layers.1.weight",
        "backbone.stages.2.blocks.17.ffn.layers.0.0.weight": "backbone.stages.2.blocks.17.ffn.layers.0.0.weight",
    }
    for old, new in pairs.items():
        assert keys.rename_2x(old) == new and keys.rename_3x_to_2x(new) == old


def test_patch_merging_order_matches_nn_unfold():
    """mmdet merges 2x2 patches with nn.Unfold (channel-major), Swin concatenates x0..x3: same outputs."""
    g = torch.Generator().manual_seed(0)
    c, out = 3, 5
    x = torch.randn(1, c, 4, 6, generator=g)
    w, gamma, beta = torch.randn(out, 4 * c, generator=g), torch.randn(4 * c, generator=g), torch.randn(4 * c, generator=g)
    parts = [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]]
    hf_in = torch.cat(parts, 1).flatten(2).transpose(1, 2)
    mm_in = torch.nn.Unfold(2, stride=2)(x).transpose(1, 2)
    red, norm = "unfold_reduction", "unfold_norm"
    y_hf = torch.nn.functional.layer_norm(hf_in, (4 * c,), gamma, beta) @ w.T
    mm_gamma, mm_beta = keys.unfold_to_mmdet(gamma, norm), keys.unfold_to_mmdet(beta, norm)
    y_mm = torch.nn.functional.layer_norm(mm_in, (4 * c,), mm_gamma, mm_beta) @ keys.unfold_to_mmdet(w, red).T
    assert torch.allclose(y_hf, y_mm, atol=1e-5)
    assert torch.equal(keys.unfold_to_hf(keys.unfold_to_mmdet(w, red), red), w)
    assert torch.equal(keys.unfold_to_hf(mm_gamma, norm), gamma)


def test_relative_position_index_is_the_one_transformers_builds():
    from transformers import SwinConfig, SwinModel

    model = SwinModel(SwinConfig(embed_dim=8, depths=[1], num_heads=[1], window_size=7))
    index = next(b for name, b in model.named_buffers() if name.endswith("relative_position_index"))
    assert torch.equal(keys.swin_relative_position_index(7), index.view(49, 49))


def test_strict_errors_name_the_keys(mm3):
    extra = {**mm3, "panoptic_head.some_new_head.weight": torch.zeros(2)}
    with pytest.raises(InputError, match=r"1 source keys not mapped: panoptic_head\.some_new_head\.weight"):
        convert_state_dict(extra)
    missing = {k: v for k, v in mm3.items() if k != "panoptic_head.mask_embed.2.bias"}
    with pytest.raises(InputError, match=r"not filled by the checkpoint: .*mask_predictor\.mask_embedder\.1\.0\.bias"):
        fill_model(convert_state_dict(missing))
    bad = dict(mm3)
    bad["panoptic_head.pixel_decoder.mask_feature.bias"] = torch.zeros(31)
    with pytest.raises(InputError, match=r"shape mismatches .*mask_projection\.bias \(31,\)->\(32,\)"):
        fill_model(convert_state_dict(bad))
    index_key = "backbone.stages.1.blocks.0.attn.w_msa.relative_position_index"
    with pytest.raises(InputError, match=r"unused keys hold unexpected values: " + index_key.replace(".", r"\.")):
        convert_state_dict({**mm3, index_key: torch.zeros(49, 49, dtype=torch.long)})
    mixed = {**mm3, "panoptic_head.transformer_decoder.layers.0.attentions.0.attn.in_proj_bias": torch.zeros(96)}
    with pytest.raises(InputError, match="no single mmdet Mask2Former layout"):
        convert_state_dict(mixed)
    with pytest.raises(InputError, match="lacks panoptic_head.cls_embed.weight"):
        convert_state_dict({k: v for k, v in mm3.items() if not k.startswith("panoptic_head.cls_embed")})


def test_converted_folder_loads_in_the_detector_and_detects_the_same(tiny, mm3, tmp_path):
    ckpt = tmp_path / "m2f_mmdet2.pth"
    state = {keys.rename_3x_to_2x(k): v for k, v in mm3.items()}
    torch.save({"meta": {"mmdet_version": "2.25.0", "hook_msgs": {"best_score": np.float64(0.5)}},
                "state_dict": state}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "conversion.json", "model.safetensors", "preprocessor_config.json"]
    record = json.loads((out / "conversion.json").read_text())
    assert record["mmdet_layout"] == "2.x" and record["test_scale"] == [1333, 800] and len(record["sha256"]) == 64
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["size"] == {"shortest_edge": 800, "longest_edge": 1333} and pre["size_divisor"] == 32
    assert np.allclose(np.array(pre["image_mean"]) * 255, [123.675, 116.28, 103.53])
    reference = load_file(tiny[0] / "model.safetensors")
    assert sorted(load_file(out / "model.safetensors")) == sorted(reference)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(40, 30), (24, 48)]]
    ours, theirs = (Mask2FormerDetector(str(p), device="cpu", scale=(64, 48)).detect(images, ["a", "b"])
                    for p in (out, tiny[0]))
    for a, b in zip(ours, theirs, strict=True):
        assert [(d.cls, d.box, d.score) for d in a] == [(d.cls, d.box, d.score) for d in b]
    with pytest.raises(InputError, match="not empty"):
        convert_checkpoint(ckpt, out)


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"NO_COLOR": "1", "COLUMNS": "200"})


def test_cli_converts_and_bad_files_give_one_line(mm3, tmp_path):
    ckpt = tmp_path / "m.pth"
    torch.save({"state_dict": mm3}, ckpt)
    result = _cli("convert", "mmdet-mask2former", ckpt, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"detector_options.model={tmp_path / 'out'}" in result.stdout
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (garbage, tmp_path / "missing.pth"):
        result = _cli("convert", "mmdet-mask2former", path, "--out", tmp_path / "o2")
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert result.stderr.startswith(f"error: {path}: ")


def test_mapping_table_is_documented():
    text = DOC.read_text()
    for rule in keys.RULES:
        for template in (rule.src, rule.dst):
            short = template.replace(keys.BB, "").replace(keys.HB, "").replace(keys.PD, "").replace(
                keys.HPD, "").replace(keys.TD, "").replace(keys.HTD, "")
            assert f"`{short}`" in text, template
    for old, new in keys.RENAME_2X:
        assert f"`{old}`" in text and f"`{new}`" in text
