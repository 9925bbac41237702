"""`janus`: Janus / Janus-Pro through transformers' `JanusForConditionalGeneration` + `JanusProcessor`.

Loads the HF format (e.g. deepseek-community/Janus-Pro-1B, a folder written by `save_pretrained`);
never sets `trust_remote_code` (the original deepseek-ai repos need it and are not this format).
Image generation uses our own batched sampler (`janus_sampler`); see `base.py` for the log-prob and
seed contracts. Prompts go through the processor's chat template when it has one (the real models),
else raw (tiny-shapes, trained without one); `chat_template=True/False` forces either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from unirl_kit.backbones.base import (
    AnswerScores,
    GenerationBatch,
    Seeds,
    check_sampling,
    image_seed,
    resolve_cfg_scale,
    resolve_seeds,
    rows_per_prompt,
    split_like,
    to_pil,
    uniform_stream,
)
from unirl_kit.backbones.janus_sampler import (
    SpecialIds,
    sample_answer_tokens,
    sample_image_tokens,
    teacher_forced_logits,
    teacher_forced_logprobs,
)
from unirl_kit.backbones.loading import (
    check_finite_weights,
    check_model_dir,
    check_tensor_names,
    check_tensor_shapes,
    is_hub_id,
    quiet_transformers,
    resolve_device,
    resolve_dtype,
)
from unirl_kit.types import InputError

_HINT = "give --model a Janus folder in the transformers format (JanusForConditionalGeneration + JanusProcessor)"


class JanusBackbone:
    """Janus / Janus-Pro (transformers format): batched CFG sampler, understanding, VQ tokenizer."""

    name: ClassVar[str] = "janus"
    DEFAULT_MODEL: ClassVar[str | None] = None  # a subclass (tiny-shapes) points this at shipped weights
    # Images per VQ decode call. 1: convolution numerics vary with the batch size (a pixel can round the
    # other way), and an image must not depend on its batch; the decode is cheap next to sampling.
    DECODE_CHUNK: ClassVar[int] = 1

    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto",
                 chat_template: bool | None = None) -> None:
        source = model or self.DEFAULT_MODEL
        if source is None:
            raise InputError(f"backbone {self.name!r} needs --model PATH (a local folder or a hub id)")
        source = str(source)
        if not is_hub_id(source):
            check_model_dir(Path(source), "janus", _HINT)  # before the slow imports and loading
        from transformers import JanusForConditionalGeneration, JanusProcessor

        self.source = source
        dev = resolve_device(device)
        try:
            with quiet_transformers():  # its load report would print a table before our one-line error
                model, info = JanusForConditionalGeneration.from_pretrained(
                    source, dtype=resolve_dtype(dtype, dev), use_safetensors=True, output_loading_info=True,
                    ignore_mismatched_sizes=True)  # refused below in one line, not transformers' report
            self.processor = JanusProcessor.from_pretrained(source)
        except OSError as exc:  # a hub id with no network, or a folder transformers cannot read
            raise InputError(f"--model {source}: cannot load ({str(exc).splitlines()[0]}); {_HINT}") from None
        check_tensor_shapes(Path(source), info.get("mismatched_keys", ()))
        check_tensor_names(Path(source), info["missing_keys"], info["unexpected_keys"])
        self.model = model.to(dev).eval()
        check_finite_weights(self.model.state_dict(), Path(source))
        self.model.model.vqmodel.requires_grad_(False)  # Janus's VQ is frozen
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.model.config.text_config.pad_token_id
        self.special = SpecialIds(bos=tok.bos_token_id, boi=tok.convert_tokens_to_ids(self.processor.image_start_token),
                                  pad=pad)
        self.eos = tok.eos_token_id
        self.use_chat = self.processor.chat_template is not None if chat_template is None else chat_template
        cfg = self.model.config
        self.num_image_tokens = int(cfg.vision_config.num_image_tokens)
        self.codebook_size = int(cfg.vq_config.num_embeddings)
        side = math.isqrt(self.num_image_tokens)
        quant = self.model.model.vqmodel.quantize
        if side * side == self.num_image_tokens and list(quant.quant_state_dims) != [side, side]:
            # transformers ties the VQ token grid to the vision patch grid (both 24x24 in Janus-Pro);
            # tiny-shapes decouples them (16x16 VQ tokens, 8x8 vision patches): the grid follows the
            # number of generated tokens
            quant.quant_state_dims = [side, side]
        self.image_size = int(quant.quant_state_dims[0]) * 2 ** (len(cfg.vq_config.channel_multiplier) - 1)
        self.max_positions = int(cfg.text_config.max_position_embeddings)
        self.default_cfg_scale = getattr(self.model.generation_config, "guidance_scale", None)

    @classmethod
    def load(cls, path: str | Path, **options) -> JanusBackbone:
        return cls(model=str(path), **options)

    def save(self, path: Path, state_dict: dict | None = None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, state_dict=state_dict)
        self.processor.save_pretrained(path)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ---- prompts ---------------------------------------------------------------------------------
    def _chat(self, content: list[dict]) -> str:
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each generation prompt ([BOS] ... [BOI]), checked against the context."""
        if not prompts:
            return []
        texts = [self._chat([{"type": "text", "text": p}]) if self.use_chat else p for p in prompts]
        enc = self.processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
        ids = [row[m.bool()].tolist() for row, m in zip(enc.input_ids, enc.attention_mask, strict=True)]
        limit = self.max_positions - self.num_image_tokens
        for i, row in enumerate(ids):
            if len(row) > limit:
                raise InputError(f"prompt {i} ({prompts[i][:40]!r}...) is {len(row)} tokens; this model fits {limit} "
                                 f"(max_position_embeddings {self.max_positions} minus {self.num_image_tokens} "
                                 "image tokens); shorten it")
        return ids

    def check_prompts(self, prompts: Sequence[str]) -> None:
        self.prompt_ids(prompts)

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], group_size: int = 1, seeds: Seeds = 0, cfg_scale: float | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 on_step: Callable[[float], None] | None = None) -> GenerationBatch:
        check_sampling(group_size, top_k, top_p)
        ids = self.prompt_ids(prompts)
        row_seeds = resolve_seeds(seeds, len(prompts), group_size)
        rows = [row for row in ids for _ in range(group_size)]
        if not rows:
            return GenerationBatch([], torch.empty(0, self.num_image_tokens, dtype=torch.long),
                                   torch.empty(0, self.num_image_tokens), [])
        uniforms = None if temperature <= 0 else uniform_stream(row_seeds, self.num_image_tokens)
        tokens, logprobs = sample_image_tokens(self.model, rows, self.special, self.num_image_tokens,
                                               resolve_cfg_scale(self, cfg_scale),
                                               temperature, uniforms, top_k, top_p, on_step=on_step)
        return GenerationBatch(self.decode_tokens(tokens), tokens, logprobs, row_seeds)

    def image_logprobs(self, prompts: Sequence[str], tokens: torch.Tensor, cfg_scale: float | None = None,
                       temperature: float = 1.0, with_entropy: bool = False, trajectory: torch.Tensor | None = None):
        del trajectory  # autoregressive: the order is fixed
        rows = self._token_rows(prompts, tokens)
        return teacher_forced_logprobs(self.model, rows, tokens, self.special, resolve_cfg_scale(self, cfg_scale),
                                       temperature, with_entropy)

    def _token_rows(self, prompts: Sequence[str], tokens: torch.Tensor) -> list[list[int]]:
        """One prompt-id row per token row (a prompt per row, or per group of rows, prompt-major)."""
        group = rows_per_prompt(prompts, tokens)
        return [row for row in self.prompt_ids(prompts) for _ in range(group)]

    def generation_logits(self, prompts: Sequence[str], tokens: torch.Tensor) -> torch.Tensor:
        """[N, T, V] conditional generation logits for `tokens` fed back (no CFG), differentiable:
        what end-to-end SFT relaxes with a Gumbel-softmax."""
        return teacher_forced_logits(self.model, self._token_rows(prompts, tokens), tokens, self.special, 1.0)[0]

    def decode_soft(self, weights: torch.Tensor) -> torch.Tensor:
        """Pixels [N, 3, H, W] in [-1, 1] from codebook weights [N, T, V], differentiable in `weights`.

        `decode` looks each code up and L2-normalises it; here the rows of the normalised codebook are
        mixed by `weights`, so one-hot weights give exactly `decode_image_tokens`' codes."""
        vq = self.model.model.vqmodel
        codebook = F.normalize(vq.quantize.embedding.weight, p=2, dim=-1)
        side = vq.quantize.quant_state_dims
        codes = (weights.to(codebook.dtype) @ codebook).view(weights.shape[0], *side, -1).permute(0, 3, 1, 2)
        return vq.decoder(vq.post_quant_conv(codes.contiguous()))

    # ---- understanding ---------------------------------------------------------------------------
    def _question_texts(self, questions: Sequence[str]) -> list[str]:
        image_tok = self.processor.image_token
        return [self._chat([{"type": "image"}, {"type": "text", "text": q}]) if self.use_chat else f"{image_tok}{q}"
                for q in questions]

    def _understanding_inputs(self, images: Sequence[Image.Image], questions: Sequence[str]):
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions; pass one of each per row")
        enc = self.processor(text=self._question_texts(questions), images=[im.convert("RGB") for im in images],
                             padding=True, return_tensors="pt")
        return enc.to(self.device), enc.pixel_values.to(self.device, self.dtype)

    def _vision_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Decoder pixels [N, 3, H, W] in [-1, 1] -> the vision tower's input, differentiably: clamped as
        `to_pil` clamps (no uint8 rounding), resized to its size, normalised with the processor's mean/std."""
        proc = self.processor.image_processor
        side = int(self.model.config.vision_config.image_size)
        x = (pixels.float().clamp(-1, 1) + 1) / 2
        if tuple(x.shape[-2:]) != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(proc.image_mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(proc.image_std, device=x.device).view(1, -1, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def answer(self, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 32,
               greedy: bool = True, seed: int = 0, temperature: float = 1.0) -> list[str]:
        if not questions:
            return []
        enc, pixels = self._understanding_inputs(images, questions)
        mask = None if bool(enc.attention_mask.all()) else enc.attention_mask
        uniforms = None if greedy else uniform_stream([image_seed(seed, i, 0) for i in range(len(questions))],
                                                      max_new_tokens)
        ids = sample_answer_tokens(self.model, enc.input_ids, mask, pixels, self.eos, max_new_tokens, uniforms,
                                   temperature)
        return [self.processor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]

    def answer_logprobs(self, images: Sequence[Image.Image], questions: Sequence[str],
                        answers: Sequence[str]) -> AnswerScores:
        """Prompt rows left-padded, answers (+ EOS) right-padded, so every answer starts at one column."""
        if len(answers) != len(questions):
            raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
        enc, pixels = self._understanding_inputs(images, questions)
        return self._score_answers(enc.input_ids, enc.attention_mask, pixels, answers)

    def answer_logprobs_from_pixels(self, pixels: torch.Tensor, questions: Sequence[str],
                                    answers: Sequence[str]) -> AnswerScores:
        """`answer_logprobs` on decoder pixels [N, 3, H, W] in [-1, 1] (e.g. `decode_soft`'s), differentiable
        in them: the end-to-end path from the understanding loss back to image generation."""
        if not len(pixels) == len(questions) == len(answers):
            raise ValueError(f"{len(pixels)} images, {len(questions)} questions, {len(answers)} answers")
        one = self.processor.replace_image_token({}, 0)  # what the processor expands each image token to
        texts = [t.replace(self.processor.image_token, one) for t in self._question_texts(questions)]
        enc = self.processor.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
        return self._score_answers(enc.input_ids.to(self.device), enc.attention_mask.to(self.device),
                                   self._vision_pixels(pixels), answers)

    @torch.no_grad()
    def candidate_logprobs(self, images: Sequence[Image.Image], questions: Sequence[str],
                           candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        """The image and question run once per image; its KV cache is copied to each of its candidates,
        which then need only their own few tokens (a contrastive judge asks ~10 per image)."""
        index = [i for i, cands in enumerate(candidates) for _ in cands]
        if not index:
            return [[] for _ in candidates]
        enc, pixels = self._understanding_inputs(images, questions)
        mask = enc.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model.model(input_ids=enc.input_ids, attention_mask=mask, position_ids=positions,
                               pixel_values=pixels, use_cache=True)
        rows = torch.tensor(index, device=self.device)
        cache = out.cache
        cache.reorder_cache(rows)  # index_select on the batch: one copy of its image's prefix per candidate
        tok = self.processor.tokenizer
        targets = [tok(text, add_special_tokens=False).input_ids + [self.eos] for cands in candidates for text in cands]
        span = max(len(t) for t in targets)
        ids = torch.full((len(targets), span), self.special.pad, dtype=torch.long)
        keep = torch.zeros((len(targets), span), dtype=torch.bool)
        for r, t in enumerate(targets):
            ids[r, : len(t)], keep[r, : len(t)] = torch.tensor(t), True
        ids, keep = ids.to(self.device), keep.to(self.device)
        first = self.model.lm_head(out.last_hidden_state[:, -1]).float().log_softmax(-1)[rows]  # predicts token 0
        logp = first.gather(-1, ids[:, :1])
        if span > 1:
            full = torch.cat([mask[rows], keep[:, :-1].long()], dim=1)
            pos = positions[rows, -1:] + 1 + torch.arange(span - 1, device=self.device)
            hidden = self.model.model(input_ids=ids[:, :-1], attention_mask=full, position_ids=pos,
                                      cache=cache, use_cache=True).last_hidden_state
            rest = self.model.lm_head(hidden).float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            logp = torch.cat([logp, rest], dim=1)
        return split_like((logp * keep).sum(-1).tolist(), candidates)

    def _score_answers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixels: torch.Tensor,
                       answers: Sequence[str]) -> AnswerScores:
        tok = self.processor.tokenizer
        targets = [tok(a, add_special_tokens=False).input_ids + [self.eos] for a in answers]
        width, span = input_ids.shape[1], max(len(t) for t in targets)
        answer_ids = torch.full((len(targets), span), self.special.pad, dtype=torch.long)
        answer_mask = torch.zeros((len(targets), span), dtype=torch.bool)
        for i, t in enumerate(targets):
            answer_ids[i, : len(t)] = torch.tensor(t)
            answer_mask[i, : len(t)] = True
        answer_ids, answer_mask = answer_ids.to(self.device), answer_mask.to(self.device)
        ids = torch.cat([input_ids, answer_ids], dim=1)
        mask = torch.cat([attention_mask, answer_mask.long()], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.model.model(input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=pixels,
                                  use_cache=False).last_hidden_state[:, width - 1: width - 1 + span]
        logp = self.model.lm_head(hidden).float().log_softmax(-1).gather(-1, answer_ids[..., None]).squeeze(-1)
        return AnswerScores(logp * answer_mask, answer_mask, answer_ids)

    # ---- image tokenizer -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor.image_processor([im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        out = self.model.model.vqmodel.encode(pixels.to(self.device, self.dtype))
        return out.image_tokens.view(len(images), -1).cpu()

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        images: list[Image.Image] = []
        for start in range(0, tokens.shape[0], self.DECODE_CHUNK):
            chunk = tokens[start: start + self.DECODE_CHUNK].to(self.device)
            images += to_pil(self.model.decode_image_tokens(chunk))
        return images
