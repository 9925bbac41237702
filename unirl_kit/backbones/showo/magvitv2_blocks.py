"""Building blocks of the MAGVIT-v2 tokenizer (taming-style conv encoder/decoder plus a lookup-free quantizer).

Attribute names (`conv_in`, `down.N.block.M.norm1`, `mid.attn_1.q`, `quantize.embedding`, ...) are the
published checkpoint's state-dict keys, so they are part of the contract: renaming one breaks loading
`showlab/magvitv2`. Facts from Show-o's `models/modeling_magvitv2.py` and `models/common_modules.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups, eps 1e-6, affine: the only normalisation the tokenizer uses (so channels % 32 == 0)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-SiLU-conv twice plus a skip; a 1x1 `nin_shortcut` only where the width changes (no time embedding)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, 1x1-conv projections, residual; scale 1/sqrt(C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(t: Tensor) -> Tensor:  # [B, C, H, W] -> [B, 1, HW, C]
            return t.reshape(b, 1, c, h * w).transpose(-1, -2)

        out = F.scaled_dot_product_attention(tokens(self.q(normed)), tokens(self.k(normed)), tokens(self.v(normed)))
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding right/bottom by one: H -> H/2 for even H, as the checkpoint was trained."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: `block` (ResnetBlocks), `attn` (one per block, or empty), optional resampler."""

    def __init__(self, widths: Sequence[tuple[int, int]], with_attn: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, dropout) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o) for _, o in widths) if with_attn else nn.ModuleList()

    def forward(self, h: Tensor) -> Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[j](h)
        return h


class Middle(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _widths(block_in: int, block_out: int, n: int) -> list[tuple[int, int]]:
    """The first block of a level changes the width; the rest keep it."""
    return [(block_in if j == 0 else block_out, block_out) for j in range(n)]


class Encoder(nn.Module):
    """Pixels [B, in_ch, H, W] -> latents [B, z_channels, H/2^(L-1), W/2^(L-1)]; `quant_conv` lives here."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: Sequence[int],
                 attn_resolutions: Sequence[int], dropout: float, in_ch: int, resolution: int,
                 z_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        block_in, res = ch, resolution
        for i, (mult, n) in enumerate(zip(ch_mult, num_res_blocks, strict=True)):
            level = Level(_widths(block_in, ch * mult, n), res in attn_resolutions, dropout)
            block_in = ch * mult
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = Middle(block_in, dropout)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.conv_out(F.silu(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class Decoder(nn.Module):
    """Codes [B, z_channels, h, w] -> pixels [B, out_ch, h*2^(L-1), w*2^(L-1)], unclamped.

    `up[i]` is level i (highest resolution first), built and run from the lowest level up,
    as in the checkpoint; `post_quant_conv` lives here.
    """

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: Sequence[int],
                 attn_resolutions: Sequence[int], dropout: float, out_ch: int, resolution: int,
                 z_channels: int) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, padding=1)
        self.mid = Middle(block_in, dropout)
        levels: list[Level] = []
        for i in reversed(range(len(ch_mult))):
            level = Level(_widths(block_in, ch * ch_mult[i], num_res_blocks[i]), res in attn_resolutions, dropout)
            block_in = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def lfq_codebook(bits: int) -> Tensor:
    """Row i is code i as ±1 floats, most significant bit in channel 0 (i = sum_c 2^(bits-1-c) [z_c > 0])."""
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.long)
    return ((torch.arange(2**bits).unsqueeze(1) >> shifts) & 1).float() * 2 - 1


def lfq_powers(bits: int) -> Tensor:
    """2^(bits-1), ..., 2, 1 (int64): channel c carries bit weight 2^(bits-1-c)."""
    return 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.long)


class LFQuantizer(nn.Module):
    """Lookup-free quantizer: each latent channel's sign is one bit; the codebook is every ±1 vector.

    Both buffers are in the published checkpoint (and so in our state dict); loading checks they follow
    the rule above, which is what fixes the bit order.
    """

    def __init__(self, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_dim = codebook_dim
        self.codebook_size = 2**codebook_dim
        self.register_buffer("embedding", lfq_codebook(codebook_dim))
        self.register_buffer("power_vals", lfq_powers(codebook_dim))

    def forward(self, z: Tensor) -> Tensor:
        """±1 codes with a straight-through gradient (zero maps to -1, as `z > 0` decides the bit)."""
        z_q = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        return z + (z_q - z).detach()

    def indices(self, z: Tensor) -> Tensor:
        """Latents [B, bits, h, w] -> code ids [B, h, w] (int64)."""
        return ((z > 0).long() * self.power_vals.view(1, -1, 1, 1)).sum(1)

    def codes(self, indices: Tensor) -> Tensor:
        """Code ids [B, h, w] -> ±1 codes [B, bits, h, w] in the buffer's dtype."""
        return self.embedding[indices].permute(0, 3, 1, 2).contiguous()
