"""Janus's image sampler and its teacher-forced twin, sharing one definition of rows and log-probs.

Why our own loop instead of `model.generate(generation_mode="image")`: every group of every prompt is
sampled in one batch with its conditional and unconditional rows together; the KV cache is written
into buffers allocated once and attention reads only the filled part (the library's static cache
attends over its whole length and rebuilds a full-length mask every step); each image draws from its
own uniform stream, so batch size and rank never change an image; the log-probs of the sampled
tokens are recorded on the way (see `backbones/base.py` for their definition); and for Llama text
models each one-token step runs `janus_decode.LeanDecoder` instead of the full forward, whose Python
overhead per step dominates small models.

Rows: conditional rows are the prompt ids ([BOS] ... [BOI]); unconditional rows keep BOS and BOI and
replace every other token by PAD, as Janus and `generate()` build them. Rows are left-padded; the
attention mask hides padding and position ids count real tokens only, so padding (which depends on
the batch) does not change the result. With cfg_scale == 1 no unconditional rows are run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from unirl_kit.backbones.janus_decode import LeanDecoder, supports_lean_decode


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    boi: int
    pad: int


@dataclass
class Rows:
    ids: torch.Tensor  # [R, L] left-padded; R = N (no CFG) or 2N (cond rows, then uncond rows)
    mask: torch.Tensor | None  # [R, L] 1 on real tokens; None when no row is padded
    positions: torch.Tensor  # [R, L]
    n: int  # images (conditional rows)


class _BufferLayer(DynamicLayer):
    """A KV-cache layer writing into one buffer allocated up front; attention reads the filled prefix."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.k_buf = key_states.new_empty(b, h, self.capacity, d)
        self.v_buf = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.k_buf[:, :, self.length:end] = key_states
        self.v_buf[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.k_buf[:, :, :end], self.v_buf[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def buffer_cache(num_layers: int, capacity: int) -> Cache:
    return Cache(layers=[_BufferLayer(capacity) for _ in range(num_layers)])


def left_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Left-padded ids and mask (None when every row has the same length)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), (None if bool(mask.all()) else mask.to(device))


def positions_from(mask: torch.Tensor | None, rows: int, width: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.arange(width, device=device).expand(rows, width)
    return (mask.cumsum(-1) - 1).clamp(min=0)


def guidance_rows(prompt_ids: Sequence[Sequence[int]], special: SpecialIds, cfg_scale: float,
                  device: torch.device) -> Rows:
    """Conditional rows, plus unconditional rows (BOS + PADs + BOI) when cfg_scale != 1."""
    rows = [list(r) for r in prompt_ids]
    if cfg_scale != 1.0:
        keep = (special.bos, special.boi)
        rows += [[t if t in keep else special.pad for t in r] for r in prompt_ids]
    ids, mask = left_pad(rows, special.pad, device)
    return Rows(ids, mask, positions_from(mask, ids.shape[0], ids.shape[1], device), len(prompt_ids))


def guided_scores(logits: torch.Tensor, n: int, cfg_scale: float, temperature: float) -> torch.Tensor:
    """uncond + s * (cond - uncond) (as `generate()` computes it), in fp32, divided by the temperature."""
    logits = logits.float()
    if logits.shape[0] != n:
        cond, uncond = logits[:n], logits[n:]
        logits = uncond + (cond - uncond) * cfg_scale
    return logits / temperature if temperature > 0 else logits


def pick_tokens(scores: torch.Tensor, uniforms: torch.Tensor | None, top_k: int | None,
                top_p: float | None) -> torch.Tensor:
    """Greedy (uniforms None) or inverse-CDF sampling of each row with its own uniform, after top-k/top-p."""
    if uniforms is None:
        return scores.argmax(-1)
    if top_k is not None and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # mass before the token already reaches top_p
        drop[:, 0] = False
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    cdf = probs.double().cumsum(-1)
    target = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=scores.shape[-1] - 1)


@torch.no_grad()
def sample_image_tokens(model, prompt_ids: Sequence[Sequence[int]], special: SpecialIds, num_tokens: int,
                        cfg_scale: float, temperature: float, uniforms: torch.Tensor | None,
                        top_k: int | None = None, top_p: float | None = None,
                        lean: bool = True, on_step: Callable[[float], None] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [N, T] and their log-probs [N, T] for one row per image; `uniforms` [N, T] (None: greedy).

    lean: per-token steps by `LeanDecoder` where the text model supports it (the prefill always runs the
    full forward); False runs the full forward every step (the reference the lean step is tested against).
    on_step: called with the share of the tokens drawn after each token (a progress bar's hook)."""
    device = model.device
    rows = guidance_rows(prompt_ids, special, cfg_scale, device)
    n, (r, width) = rows.n, rows.ids.shape
    lm, head = model.model.language_model, model.model.generation_head
    cache = buffer_cache(model.config.text_config.num_hidden_layers, width + num_tokens)
    mask = None if rows.mask is None else torch.cat(
        [rows.mask, rows.mask.new_ones(r, num_tokens)], dim=1)
    next_pos = rows.positions[:, -1:] + 1
    embeds = model.get_input_embeddings()(rows.ids)
    hidden = lm(inputs_embeds=embeds, attention_mask=rows.mask, position_ids=rows.positions, cache=cache,
                use_cache=True).last_hidden_state[:, -1]
    step = _decode_step(model, cache, mask, next_pos, lean)
    tokens = torch.empty(n, num_tokens, dtype=torch.long, device=device)
    logprobs = torch.empty(n, num_tokens, dtype=torch.float32, device=device)
    uniforms = None if uniforms is None else uniforms.to(device)
    for t in range(num_tokens):
        scores = guided_scores(head(hidden), n, cfg_scale, temperature)
        tok = pick_tokens(scores, None if uniforms is None else uniforms[:, t], top_k, top_p)
        tokens[:, t] = tok
        logprobs[:, t] = scores.log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1)
        if on_step is not None:
            on_step((t + 1) / num_tokens)
        if t + 1 == num_tokens:
            break
        hidden = step(model.prepare_embeddings_for_image_generation(tok.repeat(r // n)), t)
    return tokens.cpu(), logprobs.cpu()


def _decode_step(model, cache: Cache, mask: torch.Tensor | None, next_pos: torch.Tensor,
                 lean: bool) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """step(embeds [R, hidden], t) -> final hidden states [R, hidden] of image token t + 1, appended to
    `cache` after the prefill; `mask` [R, prefill + T] (None: no padding)."""
    lm = model.model.language_model
    width = cache.layers[0].get_seq_length()
    if lean and supports_lean_decode(model):
        decoder = LeanDecoder(lm, [(layer.k_buf, layer.v_buf) for layer in cache.layers], mask, width)
        return lambda embeds, t: decoder(embeds, next_pos + t)

    def full(embeds: torch.Tensor, t: int) -> torch.Tensor:
        step_mask = None if mask is None else mask[:, : width + t + 1]
        return lm(inputs_embeds=embeds[:, None], attention_mask=step_mask, position_ids=next_pos + t, cache=cache,
                  use_cache=True).last_hidden_state[:, -1]

    return full


def teacher_forced_logits(model, prompt_ids: Sequence[Sequence[int]], tokens: torch.Tensor,
                          special: SpecialIds, cfg_scale: float) -> tuple[torch.Tensor, int]:
    """(generation-head logits [R, T, V] for the rows of `sample_image_tokens`, N): one differentiable
    forward with `tokens` fed back; rows N.. are the unconditional ones (cfg_scale != 1)."""
    device = model.device
    rows = guidance_rows(prompt_ids, special, cfg_scale, device)
    n, (r, width) = rows.n, rows.ids.shape
    tokens = tokens.to(device)
    if tokens.shape[0] != n:
        raise ValueError(f"tokens has {tokens.shape[0]} rows for {n} prompts; pass one prompt per row")
    num_tokens = tokens.shape[1]
    image_embeds = model.prepare_embeddings_for_image_generation(tokens[:, :-1].repeat(r // n, 1))
    embeds = torch.cat([model.get_input_embeddings()(rows.ids), image_embeds], dim=1)
    steps = torch.arange(1, num_tokens, device=device)
    positions = torch.cat([rows.positions, rows.positions[:, -1:] + steps], dim=1)
    mask = None if rows.mask is None else torch.cat([rows.mask, rows.mask.new_ones(r, num_tokens - 1)], dim=1)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                        use_cache=False).last_hidden_state[:, width - 1:]
    return model.model.generation_head(hidden), n


def teacher_forced_logprobs(model, prompt_ids: Sequence[Sequence[int]], tokens: torch.Tensor,
                            special: SpecialIds, cfg_scale: float, temperature: float,
                            with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """[N, T] log-probs of `tokens` with the rows and scores of `sample_image_tokens`, in one forward;
    with_entropy: also the [N, T] entropy of each position's distribution (detached, for logging)."""
    logits, n = teacher_forced_logits(model, prompt_ids, tokens, special, cfg_scale)
    tokens = tokens.to(logits.device)
    if logits.shape[0] != n:
        cond, uncond = logits[:n].float(), logits[n:].float()
        scores = uncond + (cond - uncond) * cfg_scale
    else:
        scores = logits.float()
    if temperature > 0:
        scores = scores / temperature
    logz = torch.logsumexp(scores, dim=-1)
    logp = scores.gather(-1, tokens[..., None]).squeeze(-1) - logz
    if not with_entropy:
        return logp
    with torch.no_grad():
        log_probs = scores - logz[..., None]
        entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy



@torch.no_grad()
def sample_answer_tokens(model, ids: torch.Tensor, mask: torch.Tensor | None, pixel_values: torch.Tensor,
                         eos: int, max_new_tokens: int, uniforms: torch.Tensor | None,
                         temperature: float) -> list[list[int]]:
    """Answer token ids per row (up to and without EOS): greedy (uniforms None) or one stream per row."""
    device = model.device
    n, width = ids.shape
    cache = buffer_cache(model.config.text_config.num_hidden_layers, width + max_new_tokens)
    positions = positions_from(mask, n, width, device)
    full_mask = None if mask is None else torch.cat([mask, mask.new_ones(n, max_new_tokens)], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=pixel_values,
                   cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    answers: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    uniforms = None if uniforms is None else uniforms.to(device)
    for t in range(max_new_tokens):
        scores = logits.float() / temperature if uniforms is not None and temperature > 0 else logits.float()
        tok = pick_tokens(scores, None if uniforms is None else uniforms[:, t], None, None)
        for i in (~done).nonzero().flatten().tolist():
            if tok[i].item() != eos:
                answers[i].append(int(tok[i]))
        done |= tok == eos
        if bool(done.all()) or t + 1 == max_new_tokens:
            break
        step_mask = None if full_mask is None else full_mask[:, : width + t + 1]
        logits = model(input_ids=tok[:, None], attention_mask=step_mask, position_ids=positions[:, -1:] + 1 + t,
                       cache=cache, use_cache=True).logits[:, -1]
    return answers
