"""MAGVIT-v2 tokenizer (Show-o): shapes, the LFQ bit order, the published folder layout and the key inventory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unirl_kit.backbones.showo.magvitv2 import MagvitV2, MagvitV2Config, load_magvitv2, save_magvitv2
from unirl_kit.backbones.showo.magvitv2_blocks import LFQuantizer, lfq_codebook
from unirl_kit.backbones.showo.magvitv2_keys import (
    OFFICIAL_PARAM_COUNT,
    OFFICIAL_STATE_NUMEL,
    expected_keys,
    param_count,
)
from unirl_kit.types import InputError


def tiny_model(seed: int = 0) -> MagvitV2:
    torch.manual_seed(seed)
    return MagvitV2(MagvitV2Config.tiny()).eval()


def pixels(seed: int = 1, batch: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, h, w, generator=gen) * 2 - 1


@pytest.fixture(scope="module")
def model() -> MagvitV2:
    return tiny_model()


# --- encode / decode ---------------------------------------------------------------------------

def test_encode_decode_shapes_and_ranges(model: MagvitV2) -> None:
    with torch.no_grad():
        tokens = model.encode(pixels())
        images = model.decode(tokens)
    assert tokens.shape == (2, 4) and tokens.dtype == torch.long  # 32 px / 16 = 2x2 tokens
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 64
    assert images.shape == (2, 3, 32, 32)
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0


def test_non_square_grid_needs_shape(model: MagvitV2) -> None:
    with torch.no_grad():
        tokens = model.encode(pixels(h=32, w=64))
        assert tokens.shape == (2, 8)
        assert model.decode(tokens, shape=(2, 4)).shape == (2, 3, 32, 64)
    with pytest.raises(InputError, match="grid"):
        model.decode(tokens)


def test_bad_inputs_fail_clearly(model: MagvitV2) -> None:
    with pytest.raises(InputError, match="multiples of 16"):
        model.encode(pixels(h=24, w=32))
    with pytest.raises(InputError, match="0..63"):
        model.decode(torch.tensor([[0, 1, 2, 64]]))


def test_same_seed_same_tokens() -> None:
    with torch.no_grad():
        a = tiny_model(seed=3).encode(pixels(seed=5))
        b = tiny_model(seed=3).encode(pixels(seed=5))
    assert torch.equal(a, b)


# --- LFQ ---------------------------------------------------------------------------------------

def test_lfq_round_trips_every_code() -> None:
    lfq = LFQuantizer(6)
    ids = torch.arange(64).reshape(1, 8, 8)
    codes = lfq.codes(ids)
    assert codes.shape == (1, 6, 8, 8) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(lfq.indices(codes), ids)


def test_lfq_bit_order_by_hand() -> None:
    """Channel 0 is the most significant bit; a zero latent counts as a 0 bit."""
    lfq = LFQuantizer(13)

    def index(positive: list[int], zero: tuple[int, ...] = ()) -> int:
        z = -torch.ones(1, 13, 1, 1)
        z[0, positive] = 0.5
        z[0, list(zero)] = 0.0
        return int(lfq.indices(z))

    assert index([]) == 0
    assert index([0]) == 4096
    assert index([12]) == 1
    assert index([0, 11, 12]) == 4096 + 2 + 1
    assert index(list(range(13))) == 8191
    assert index([1], zero=(2,)) == 2048
    assert lfq.codes(torch.tensor([[[5]]])).flatten().tolist() == [-1.0] * 10 + [1.0, -1.0, 1.0]
    assert torch.equal(lfq.embedding, lfq_codebook(13)) and lfq.power_vals.dtype == torch.long


def test_lfq_forward_is_sign_with_straight_through() -> None:
    z = torch.tensor([[[[0.3]], [[-2.0]], [[0.0]]]], requires_grad=True)
    q = LFQuantizer(3)(z)
    assert q.flatten().tolist() == [1.0, -1.0, -1.0]
    q.sum().backward()
    assert z.grad is not None and torch.equal(z.grad, torch.ones_like(z))


# --- folder layout -----------------------------------------------------------------------------

def test_save_load_round_trip(model: MagvitV2, tmp_path: Path) -> None:
    save_magvitv2(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_magvitv2(tmp_path)
    assert loaded.config == model.config and not loaded.training
    before, after = model.state_dict(), loaded.state_dict()
    assert list(before) == list(after)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    x = pixels()
    with torch.no_grad():
        tokens = model.encode(x)
        assert torch.equal(loaded.encode(x), tokens)
        assert torch.equal(loaded.decode(tokens), model.decode(tokens))


def test_loads_published_bin_layout(model: MagvitV2, tmp_path: Path) -> None:
    """pytorch_model.bin plus a config.json carrying diffusers-style metadata keys."""
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    cfg = {"_class_name": "MAGVITv2", "_version": "0.0.1", "_name_or_path": "showlab/magvitv2",
           **{k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_magvitv2(tmp_path, dtype=torch.bfloat16)
    assert loaded.decoder.conv_out.weight.dtype == torch.bfloat16
    assert loaded.quantize.power_vals.dtype == torch.long
    assert torch.equal(loaded.decoder.conv_out.weight, model.decoder.conv_out.weight.to(torch.bfloat16))


def test_official_metadata_only_config_is_the_real_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "MAGVITv2", "_version": "0.0.1"}))
    config = MagvitV2Config.from_json(tmp_path / "config.json")
    assert config == MagvitV2Config()
    assert config.codebook_size == 8192 and config.downsample_factor == 16


def test_config_json_round_trip_and_unknown_key(tmp_path: Path) -> None:
    tiny = MagvitV2Config.tiny()
    tiny.to_json(tmp_path / "config.json")
    assert MagvitV2Config.from_json(tmp_path / "config.json") == tiny
    with pytest.raises(InputError, match="'codebook_bits'"):
        MagvitV2Config.from_dict({"codebook_bits": 13})
    with pytest.raises(InputError, match="_class_name"):
        MagvitV2Config.from_dict({"_class_name": "VQModel"})
    with pytest.raises(InputError, match="z_channels"):
        MagvitV2Config(z_channels=12)


def _write(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    MagvitV2Config.tiny().to_json(folder / "config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("damage, expect", [
    ("rename", ["missing", "unexpected", "encoder.conv_in.weight", "encoder.conv_inn.weight"]),
    ("drop", ["1 missing", "decoder.conv_out.bias"]),
    ("shape", ["wrong shape", "encoder.quant_conv.weight"]),
    ("bits", ["bit order"]),
])
def test_damaged_state_dict_fails_naming_the_key(model: MagvitV2, tmp_path: Path, damage: str,
                                                 expect: list[str]) -> None:
    state = dict(model.state_dict())
    if damage == "rename":
        state["encoder.conv_inn.weight"] = state.pop("encoder.conv_in.weight")
    elif damage == "drop":
        del state["decoder.conv_out.bias"]
    elif damage == "shape":
        state["encoder.quant_conv.weight"] = torch.zeros(6, 6, 3, 3)
    else:
        state["quantize.embedding"] = state["quantize.embedding"].flip(1)
    folder = _write(tmp_path / "ckpt", state)
    with pytest.raises(InputError) as err:
        load_magvitv2(folder)
    message = str(err.value)
    assert "\n" not in message and str(folder) in message
    for part in expect:
        assert part in message
    if damage in ("drop", "shape"):
        assert load_magvitv2(folder, strict=False).encode(pixels()).shape == (2, 4)


def test_missing_folder_or_weights(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        load_magvitv2(tmp_path / "nope")
    MagvitV2Config.tiny().to_json(tmp_path / "config.json")
    with pytest.raises(InputError, match="pytorch_model.bin"):
        load_magvitv2(tmp_path)


# --- key inventory -----------------------------------------------------------------------------

def test_official_inventory_matches_the_param_count() -> None:
    keys = expected_keys(MagvitV2Config())
    total = 0
    for shape in keys.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    assert total == OFFICIAL_STATE_NUMEL
    assert param_count() == OFFICIAL_PARAM_COUNT == 95_387_004
    assert keys["quantize.embedding"] == (8192, 13) and keys["quantize.power_vals"] == (13,)
    assert keys["encoder.conv_out.weight"] == (13, 512, 3, 3)
    assert keys["decoder.conv_in.weight"] == (512, 13, 3, 3)
    assert keys["decoder.up.1.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert not any(".attn.0." in k for k in keys)  # attn_resolutions [5] never matches


def test_tiny_state_dict_equals_inventory(model: MagvitV2) -> None:
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_keys(MagvitV2Config.tiny())
