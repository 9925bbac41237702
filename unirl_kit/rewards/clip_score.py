"""`clip-score`: CLIPScore (Hessel et al. 2021), w * max(cos(image, prompt), 0) with w = 2.5, from an
open_clip model loaded by the colour classifier's loader (local weights or a cached tag; no download)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from unirl_kit.eval.geneval.colors.clip import load_open_clip
from unirl_kit.rewards.base import RewardOutput, Sample
from unirl_kit.types import InputError

_TEXT_CACHE_MAX = 4096  # prompt embeddings kept; a GRPO group repeats its prompt


class ClipScoreReward:
    """Image-prompt cosine similarity of an open_clip model, scaled as CLIPScore (`scale` * max(cos, 0)).

    `pretrained` is required: a local weights file (.pt/.bin/.safetensors) or an open_clip tag already in
    the local cache. `model`: an open_clip model name or the path of an open_clip config JSON.
    """

    name: ClassVar[str] = "clip-score"
    needs_backbone: ClassVar[bool] = False

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, device: str = "auto",
                 scale: float = 2.5, batch_size: int = 32, quick_gelu: bool | None = None) -> None:
        if pretrained is None:
            raise InputError("rewards.clip-score: give pretrained=FILE (local open_clip weights) or a cached "
                             "open_clip tag; a random CLIP would make the reward meaningless")
        if batch_size < 1:
            raise InputError(f"rewards.clip-score: batch_size must be >= 1, got {batch_size}")
        self.clip = load_open_clip(model, pretrained, device, quick_gelu, where="rewards.clip-score")
        self.scale = float(scale)
        self.batch_size = batch_size
        self._text: dict[str, torch.Tensor] = {}

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """[N, D] unit embeddings of the prompts, each computed once."""
        missing = sorted({p for p in prompts if p not in self._text})
        if missing:
            if len(self._text) + len(missing) > _TEXT_CACHE_MAX:
                self._text.clear()
            tokens = self.clip.tokenizer(missing).to(self.clip.device)
            with torch.no_grad():
                emb = F.normalize(self.clip.model.encode_text(tokens).float(), dim=-1)
            self._text.update(zip(missing, emb, strict=True))
        return torch.stack([self._text[p] for p in prompts])

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput:
        scores: list[float] = []
        details: list[dict[str, Any]] = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start:start + self.batch_size]
            pixels = torch.stack([self.clip.preprocess(s.image.convert("RGB")) for s in chunk])
            with torch.no_grad():
                image = F.normalize(self.clip.model.encode_image(pixels.to(self.clip.device)).float(), dim=-1)
            cos = (image * self.text_embeddings([s.spec.prompt for s in chunk])).sum(dim=-1).cpu().tolist()
            for c in cos:
                scores.append(self.scale * max(c, 0.0))
                details.append({"cosine": c})
        return RewardOutput(scores, details)
