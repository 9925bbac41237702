"""What a MAGVIT-v2 checkpoint must hold: every state-dict name and shape, without allocating weights.

A wrong folder or a changed module name then fails at load time, before any forward pass.
"""

from __future__ import annotations

import torch

from unirl_kit.backbones.showo.magvitv2 import MagvitV2, MagvitV2Config

# Learnable parameters of the official tokenizer (`showlab/magvitv2`, default MAGVITv2() of Show-o's
# models/modeling_magvitv2.py). No published figure was found in the Show-o repo; this is a closed-form
# count from that file's defaults (conv k*k*in*out + out, GroupNorm 2*C, 1x1 nin_shortcut where widths
# change, attention only in the two middle blocks): encoder 55,439,171 + decoder 39,947,833.
OFFICIAL_PARAM_COUNT = 95_387_004
# Buffers `quantize.embedding` [8192, 13] and `quantize.power_vals` [13], also in the published file.
OFFICIAL_BUFFER_NUMEL = 8192 * 13 + 13
OFFICIAL_STATE_NUMEL = OFFICIAL_PARAM_COUNT + OFFICIAL_BUFFER_NUMEL
BUFFER_KEYS = ("quantize.embedding", "quantize.power_vals")


def expected_keys(config: MagvitV2Config | None = None) -> dict[str, tuple[int, ...]]:
    """State-dict name -> shape for `config` (default: the official one), built on the meta device."""
    with torch.device("meta"):
        model = MagvitV2(config or MagvitV2Config())
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def param_count(config: MagvitV2Config | None = None) -> int:
    """Learnable parameters only (the LFQ buffers are fixed by the bit rule)."""
    return sum(_numel(s) for k, s in expected_keys(config).items() if k not in BUFFER_KEYS)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
