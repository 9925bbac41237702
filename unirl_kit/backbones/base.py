"""The backbone protocol: what every unified model (generate images + answer questions) offers.

Shaped for an autoregressive model (Janus: one token per step, CFG on logits) and a masked-diffusion
model (Show-o: tokens unmasked over steps) alike: everything is stated per *image token*.

Log-probabilities (the policy-gradient quantity). `GenerationBatch.logprobs[n, t]` is the log-prob
of image token t under the distribution the sampler draws from, *before* top-k/top-p truncation:

    logits = uncond + cfg_scale * (cond - uncond)     (cfg_scale == 1: the conditional logits alone)
    logprob = log_softmax(logits / temperature)[token]    (temperature <= 0 counts as 1 here)

So CFG and temperature are included; top-k/top-p are not (they only cut the support, and counting
them would give -inf for a token a later policy ranks outside its top-k, breaking importance ratios;
TRL computes GRPO log-probs the same way). `image_logprobs` returns exactly this quantity,
teacher-forced and differentiable, for the same (prompts, tokens, cfg_scale, temperature). For
"conditional branch only" log-probs pass cfg_scale=1 to `image_logprobs`. An AR model's image
log-prob is the sum over t; a masked-diffusion model reports each token's log-prob at the step it
was unmasked (its `logprobs` definition must say so; same contract: sampled == teacher-forced).
Sampled and teacher-forced values agree to ~1e-6 in fp32; in bf16 (GPU) a cached decode and one full
forward round differently (~1e-2), so a trainer that needs exact old log-probs recomputes them with
`image_logprobs` before updating.

Seeds. An image's randomness depends only on its own seed, and `image_seed(base, prompt_index,
image_index)` derives that seed, so the same image comes out whatever the batch size, the batch
composition or the number of ranks (callers pass *global* prompt indices). `uniform_stream` gives
each image its own stream of uniforms (numpy PCG64, identical on every platform and device); the
Janus sampler spends one uniform per token (inverse-CDF sampling), so no shared torch RNG is involved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from unirl_kit.types import InputError

Seeds = int | Sequence[Sequence[int]]  # a base seed, or one seed per (prompt, image)


@dataclass
class GenerationBatch:
    """Images for `len(prompts) * group_size` rows, prompt-major: row p*K + k is image k of prompt p."""

    images: list[Image.Image]
    tokens: torch.Tensor  # [N, T] int64 image token ids (CPU)
    logprobs: torch.Tensor  # [N, T] float32 sampled log-probs as defined above (CPU)
    seeds: list[int]  # the seed each row was drawn with
    # [N, T] int64, masked-diffusion samplers only: the decoding step at which each token was revealed
    # and kept. With it, `image_logprobs` rebuilds each step's masked state; None for AR models.
    trajectory: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class AnswerScores:
    """Teacher-forced scores of given answers (answer tokens then EOS), right-padded."""

    logprobs: torch.Tensor  # [N, A] float32, differentiable; 0 where mask is False
    mask: torch.Tensor  # [N, A] bool: True on answer/EOS tokens
    token_ids: torch.Tensor  # [N, A] int64 the scored tokens (pad where mask is False)

    @property
    def loss(self) -> torch.Tensor:
        """Mean NLL per answer token over the batch (the SFT understanding loss)."""
        return -(self.logprobs * self.mask).sum() / self.mask.sum().clamp(min=1)

    @property
    def sequence_logprobs(self) -> torch.Tensor:
        """[N] sum of each answer's token log-probs."""
        return (self.logprobs * self.mask).sum(-1)


@runtime_checkable
class Backbone(Protocol):
    """A unified multimodal model, loaded from an HF-style directory (safetensors)."""

    name: str
    model: torch.nn.Module  # the trainable network (optimizer, DDP wrapping, train/eval mode)
    num_image_tokens: int  # T: tokens per image
    codebook_size: int
    image_size: int  # pixels per side of generated images
    tokenizer: Any  # the text tokenizer (transformers), e.g. to count answer tokens
    default_cfg_scale: float | None  # the guidance these weights sample with; None: 5 (resolve_cfg_scale)

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def generate(self, prompts: Sequence[str], group_size: int = 1, seeds: Seeds = 0, cfg_scale: float | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 on_step: Callable[[float], None] | None = None) -> GenerationBatch:
        """Sample `group_size` images per prompt, all in one batch; no gradients. `cfg_scale` None: the
        weights' own (`resolve_cfg_scale`), as for `image_logprobs`. `on_step` (optional: `unirl generate`
        passes it only to a backbone whose `generate` takes it) is called with the share of the batch's
        sampling done, so a progress bar moves while one batch of images is drawn."""
        ...

    def image_logprobs(self, prompts: Sequence[str], tokens: torch.Tensor, cfg_scale: float | None = None,
                       temperature: float = 1.0, with_entropy: bool = False, trajectory: torch.Tensor | None = None):
        """[N, T] teacher-forced log-probs of `tokens`; differentiable (one forward pass for AR models).

        `prompts` has one entry per row, or one per group of N / len(prompts) rows (prompt-major, the
        order `generate` returns). with_entropy: returns (logprobs, entropy [N, T], detached).
        `trajectory`: `GenerationBatch.trajectory` rows for masked-diffusion models (ignored by AR ones)."""
        ...

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 32,
               greedy: bool = True, seed: int = 0, temperature: float = 1.0) -> list[str]:
        """One answer per (image, question); sampled answers draw from `image_seed(seed, row, 0)`."""
        ...

    def answer_logprobs(self, images: Sequence[Image.Image], questions: Sequence[str],
                        answers: Sequence[str]) -> AnswerScores:
        """Teacher-forced per-token log-probs of the given answers; differentiable."""
        ...

    def candidate_logprobs(self, images: Sequence[Image.Image], questions: Sequence[str],
                           candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """Summed log-prob (answer tokens + EOS) of every candidate answer of every (image, question);
        no gradient. What the contrastive self-judges read; `candidate_logprobs_by_rows` is the plain way."""
        ...

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, T] image token ids."""
        ...

    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        """RGB images of `image_size` pixels from [N, T] token ids."""
        ...

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise InputError naming the first prompt that does not fit the model's context."""
        ...

    def save(self, path: Path, state_dict: dict | None = None) -> None:
        """Write an HF-style directory (config, safetensors weights, tokenizer/processor) that `load` reads;
        `state_dict` replaces the model's own weights in the file (e.g. LoRA merged)."""
        ...


@runtime_checkable
class DifferentiableImages(Protocol):
    """The optional capability end-to-end SFT (`mode=e2e`) needs: a path from generation logits through
    the decoder to the answer loss that gradients can follow (Janus has it; Show-o's discrete diffusion does
    not). A backbone class has it when `issubclass(cls, DifferentiableImages)`."""

    def generation_logits(self, prompts: Sequence[str], tokens: torch.Tensor) -> torch.Tensor:
        """[N, T, V] conditional generation logits for `tokens` fed back (no CFG), differentiable."""
        ...

    def decode_soft(self, weights: torch.Tensor) -> torch.Tensor:
        """Pixels [N, 3, H, W] in [-1, 1] from codebook weights [N, T, V], differentiable in `weights`."""
        ...

    def answer_logprobs_from_pixels(self, pixels: torch.Tensor, questions: Sequence[str],
                                    answers: Sequence[str]) -> AnswerScores:
        """`answer_logprobs` on decoder pixels, differentiable in them."""
        ...


def candidate_logprobs_by_rows(backbone: Any, images: Sequence[Image.Image], questions: Sequence[str],
                               candidates: Sequence[Sequence[str]]) -> list[list[float]]:
    """`candidate_logprobs` as one `answer_logprobs` row per (image, candidate): the image and question are
    read again for every candidate (Janus shares them through the KV cache instead)."""
    rows = [(i, text) for i, cands in enumerate(candidates) for text in cands]
    if not rows:
        return [[] for _ in candidates]
    with torch.no_grad():
        got = backbone.answer_logprobs([images[i] for i, _ in rows], [questions[i] for i, _ in rows],
                                       [text for _, text in rows])
    return split_like(got.sequence_logprobs.float().tolist(), candidates)


def split_like(flat: Sequence[float], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
    """`flat` (one value per candidate, image-major) cut back into one list per image."""
    out, at = [], 0
    for cands in candidates:
        out.append(list(flat[at:at + len(cands)]))
        at += len(cands)
    return out


def check_sampling(group_size: int, top_k: int | None = None, top_p: float | None = None) -> None:
    """One-line errors for sampling settings every backbone shares."""
    if group_size < 1:
        raise InputError(f"group_size: must be at least 1, got {group_size}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k: must be at least 1 (or null for none), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p: must be in (0, 1] (or null for none), got {top_p}")


def rows_per_prompt(prompts: Sequence[str], tokens: torch.Tensor) -> int:
    """Token rows per prompt for `image_logprobs`: one prompt per row, or per group (prompt-major)."""
    if not prompts or tokens.shape[0] % len(prompts):
        raise ValueError(f"{tokens.shape[0]} token rows for {len(prompts)} prompts: give one prompt per row "
                         "or per group (rows prompt-major, as generate returns them)")
    return tokens.shape[0] // len(prompts)


DEFAULT_CFG_SCALE = 5.0  # Janus's and Janus-Pro's published guidance


def resolve_cfg_scale(backbone: Backbone, cfg_scale: float | None) -> float:
    """An explicit scale, else the backbone's `default_cfg_scale` (Janus: the model folder's
    generation_config.json `guidance_scale`), else 5. Why: the right guidance belongs to the weights
    (tiny-shapes since v5 samples best unguided), not to the command that runs them."""
    if cfg_scale is not None:
        return float(cfg_scale)
    return float(backbone.default_cfg_scale or DEFAULT_CFG_SCALE)


def image_seed(base: int, prompt_index: int, image_index: int) -> int:
    """A 63-bit seed for one image, a hash of (base, prompt index, image index) and nothing else."""
    if min(base, prompt_index, image_index) < 0:
        raise ValueError("seeds and indices must be non-negative")
    lo, hi = np.random.SeedSequence([base, prompt_index, image_index]).generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) & (2**63 - 1)


def resolve_seeds(seeds: Seeds, n_prompts: int, group_size: int) -> list[int]:
    """Per-row seeds (prompt-major) from a base seed or an explicit [prompt][image] table."""
    if isinstance(seeds, (int, np.integer)):
        return [image_seed(int(seeds), p, k) for p in range(n_prompts) for k in range(group_size)]
    table = [list(row) for row in seeds]
    if len(table) != n_prompts or any(len(row) != group_size for row in table):
        raise ValueError(f"seeds: expected {n_prompts} rows of {group_size} seeds, one per (prompt, image)")
    return [int(s) for row in table for s in row]


def uniform_stream(seeds: Sequence[int], length: int) -> torch.Tensor:
    """[len(seeds), length] float64 uniforms in [0, 1), row i from its own generator seeded seeds[i]."""
    return torch.from_numpy(np.stack([np.random.default_rng(s).random(length) for s in seeds]))


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """NHWC pixels in [-1, 1] -> RGB images (round to nearest, as the pre-training gate does)."""
    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]
