"""What `unirl generate` writes per prompt, beside GenEval's layout, and how to read it back.

OUT/<i:05d>/metadata.jsonl        the prompt's metadata line (GenEval layout)
OUT/<i:05d>/samples/<k:04d>.png   image k (GenEval layout)
OUT/<i:05d>/grid.png              all images of the prompt in one picture
OUT/<i:05d>/tokens.safetensors    `tokens` [K, T] int64 image token ids, `logprobs` [K, T] float32 sampled
                                  log-probs (definition: backbones/base.py), `seeds` [K] int64; the header
                                  metadata records backbone, model and sampling settings; masked-diffusion
                                  backbones add `trajectory` [K, T] int64 (the step each token was revealed)
`tokens.safetensors` is written last and atomically: it marks the prompt as finished.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from unirl_kit.eval.geneval.layout import image_rel, prompt_folder, save_png_atomic

TOKENS_FILE = "tokens.safetensors"
GRID_FILE = "grid.png"
TOKENS_FIX = "delete its prompt folder and rerun `unirl generate` to draw it again"


def is_done(out: Path, index: int, group_size: int) -> bool:
    """A prompt is finished when its tokens file holds `group_size` rows and every PNG exists."""
    path = prompt_folder(out, index) / TOKENS_FILE
    if not path.is_file():
        return False
    from safetensors import safe_open

    from unirl_kit.checkpoint import safetensors_errors

    with safetensors_errors(path, TOKENS_FIX), safe_open(str(path), framework="pt") as fh:
        rows = fh.get_slice("tokens").get_shape()[0]
    return rows == group_size and all((Path(out) / image_rel(index, k)).is_file() for k in range(group_size))


def make_grid(images: list[Image.Image], gap: int = 2) -> Image.Image:
    """Images in a near-square grid (columns = ceil(sqrt(K))) on a white background."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), "white")
    for k, im in enumerate(images):
        grid.paste(im, ((k % cols) * (w + gap), (k // cols) * (h + gap)))
    return grid


def write_prompt_outputs(out: Path, index: int, images: list[Image.Image], tokens: torch.Tensor,
                         logprobs: torch.Tensor, seeds: list[int], header: dict[str, Any],
                         trajectory: torch.Tensor | None = None) -> None:
    """PNGs, grid, then the tokens file (the completion marker), each written atomically."""
    from safetensors.torch import save_file

    for k, im in enumerate(images):
        save_png_atomic(im, Path(out) / image_rel(index, k))
    folder = prompt_folder(out, index)
    save_png_atomic(make_grid(images), folder / GRID_FILE)
    tmp = folder / (TOKENS_FILE + ".tmp")
    tensors = {"tokens": tokens.to(torch.int64).contiguous(), "logprobs": logprobs.float().contiguous(),
               "seeds": torch.tensor(seeds, dtype=torch.int64)}
    if trajectory is not None:
        tensors["trajectory"] = trajectory.to(torch.int64).contiguous()
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in header.items()})
    tmp.replace(folder / TOKENS_FILE)


def read_prompt_samples(out: Path, index: int) -> dict[str, Any]:
    """`tokens`, `logprobs`, `seeds` (and `trajectory` when written) tensors and the header of one prompt folder (for training)."""
    from safetensors import safe_open

    from unirl_kit.checkpoint import safetensors_errors
    from unirl_kit.jsonl import parse_json

    path = prompt_folder(out, index) / TOKENS_FILE
    with safetensors_errors(path, TOKENS_FIX), safe_open(str(path), framework="pt") as fh:
        data: dict[str, Any] = {k: fh.get_tensor(k) for k in fh.keys()}
        data["header"] = {k: parse_json(v, f"{path}: header {k!r}") for k, v in (fh.metadata() or {}).items()}
    return data
