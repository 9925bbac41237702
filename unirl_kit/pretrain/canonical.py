"""Local ("canonical") image-token targets for the language model's generation half (tiny-shapes v4).

Why: the tokenizer's encoder sees the whole image (Janus's VQ has attention in its mid block), so
the same flat background, or the same shape, is written with many interchangeable codes chosen by
far-away context: ~72 distinct codes in a one-object 64x64 image, and a halo of non-background
codes three tokens around each object. A 4-layer generator has to model that arbitrary choice.
Here each token is instead the commonest code the encoder gives to the same pixel window (the
token's 4x4 patch plus `margin` pixels around it) over a fixed set of scenes. The decoder is
unchanged and reads these tokens back as well as the encoder's own (measured by `canonical_gate`),
and, with objects on the token grid, a shape of a given size and colour is always the same tokens.
"""

from __future__ import annotations

import collections

import numpy as np
import torch

from unirl_kit.pretrain.scenes import scene_batch, to_uint8

TABLE_SEED = 5_000  # its own scene stream, disjoint from the generation batches' (seed + 1_000)


def window_keys(images: np.ndarray, margin: int, patch: int = 4) -> list[list[bytes]]:
    """Per image, per token (raster order): the bytes of the token's pixel window."""
    pad = np.pad(images, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="edge")
    grid = images.shape[1] // patch
    keys: list[list[bytes]] = [[] for _ in range(images.shape[0])]
    for i in range(grid):
        for j in range(grid):
            window = pad[:, patch * i:patch * (i + 1) + 2 * margin, patch * j:patch * (j + 1) + 2 * margin]
            flat = np.ascontiguousarray(window).reshape(images.shape[0], -1)
            for b in range(images.shape[0]):
                keys[b].append(flat[b].tobytes())
    return keys


@torch.no_grad()
def build_canonical_codes(vq, seed: int, align: int, margin: int, batches: int,
                          batch_size: int = 32, size: int = 64) -> dict[bytes, int]:
    """Window -> the encoder's commonest code for it, over `batches` x `batch_size` scenes."""
    counts: dict[bytes, collections.Counter] = collections.defaultdict(collections.Counter)
    for step in range(batches):
        pixels, _ = scene_batch(seed + TABLE_SEED, step, batch_size, size, align)
        tokens = vq.encode(pixels).image_tokens.view(pixels.shape[0], -1).tolist()
        for row_keys, row_codes in zip(window_keys(to_uint8(pixels), margin), tokens, strict=True):
            for key, code in zip(row_keys, row_codes, strict=True):
                counts[key][code] += 1
    # ties break toward the smaller code, so the table does not depend on dict order
    return {key: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for key, c in counts.items()}


def canonical_tokens(table: dict[bytes, int], pixels: torch.Tensor, tokens: torch.Tensor,
                     margin: int) -> tuple[torch.Tensor, float]:
    """The table's code where it knows the window, else the encoder's; and the share it knew."""
    out = tokens.clone().view(pixels.shape[0], -1)
    known = 0
    for b, row in enumerate(window_keys(to_uint8(pixels), margin)):
        for k, key in enumerate(row):
            code = table.get(key)
            if code is not None:
                out[b, k] = code
                known += 1
    return out.view_as(tokens), known / out.numel()
