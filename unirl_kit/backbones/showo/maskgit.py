"""Show-o's MaskGIT sampler, its teacher-forced twin, and a one-pass estimate, sharing one score rule.

The sampler follows the official `Showo.t2i_generate`: every step predicts all image positions (one
forward of the conditional rows and, with CFG, the unconditional ones), samples every still-masked
position, then re-masks the `floor(T * cos(pi/2 * (s+1)/S))` least confident of them (clamped to
[1, unknown - 1]) where confidence = log p(sampled) + temperature * (1 - (s+1)/S) * Gumbel noise; the
last step keeps everything. Differences, each for a reason:
- randomness comes only from each image's own uniforms (`maskgit_uniform_count` of them, laid out
  [step][categorical | gumbel][token]): inverse-CDF sampling and Gumbel noise -log(-log(u)), so an image
  never depends on its batch;
- ties in confidence are broken by position (stable sort), so each step reveals exactly the scheduled
  count (the official `confidence < cut_off` may reveal more on exact ties);
- scores follow the project's contract (`backbones/base.py`): uncond + cfg_scale * (cond - uncond),
  i.e. Show-o's `(1 + w) * cond - w * uncond` with w = cfg_scale - 1 (cfg_scale 1: no unconditional
  rows), restricted to the codebook columns, divided by the temperature. Show-o samples at
  temperature 1 (its only scripted value), where this is its sampler exactly; other temperatures also
  scale the logits, which the official code leaves alone.

Log-probs: `logprobs[n, t]` is log_softmax(scores)[token] at the step token t was revealed
(temperature <= 0: greedy argmax, no noise, scores at temperature 1); `step_of_token[n, t]` is that
step. `trajectory_logprobs` rebuilds every step's masked state from `step_of_token` and recomputes the
same numbers with gradients.

Rows: [R, L] from `prompting.t2i_rows` (R = N, or 2N with the unconditional rows after the
conditional ones); the image tokens are columns [L - 1 - T, L - 1). `mask` is their 4D omni mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from unirl_kit.backbones.showo.model import additive_mask, unwrap

LOG_EPS = math.log(1e-20)  # the official `log(t.clamp(min=1e-20))`


def maskgit_uniform_count(num_tokens: int, timesteps: int) -> int:
    """Uniforms each image spends: one categorical draw and one Gumbel draw per token per step."""
    return 2 * timesteps * num_tokens


def masked_after_steps(num_tokens: int, timesteps: int) -> list[int]:
    """Tokens still masked after each step; float32 cosine as the official schedule computes it."""
    unknown, out = num_tokens, []
    for step in range(timesteps):
        if step == timesteps - 1:
            unknown = 0
        else:
            ratio = torch.cos(torch.tensor((step + 1) / timesteps) * math.pi * 0.5)
            length = int((num_tokens * ratio).floor())
            unknown = max(1, min(unknown - 1, length))
        out.append(unknown)
    return out


def _rows_per_image(rows: torch.Tensor, cfg_scale: float) -> tuple[int, int]:
    r = rows.shape[0]
    if cfg_scale == 1.0:
        return r, 1
    if r % 2:
        raise ValueError(f"cfg_scale {cfg_scale} needs conditional and unconditional rows; got {r} rows")
    return r // 2, 2


def image_scores(model, ids: torch.Tensor, mask: torch.Tensor, num_tokens: int, codebook_offset: int,
                 codebook_size: int, cfg_scale: float, temperature: float, n: int) -> torch.Tensor:
    """[n * (R' / rows per image), T, C] fp32 guided codebook scores / temperature for stacked rows
    [k * R, L] (k blocks of R = n or 2n rows, each block cond rows then uncond rows)."""
    length = ids.shape[1]
    logits = model(ids, mask, keep=slice(length - 1 - num_tokens, length - 1),
                   columns=(codebook_offset, codebook_offset + codebook_size)).float()
    if cfg_scale != 1.0:
        blocks = logits.view(-1, 2, n, num_tokens, codebook_size)
        cond, uncond = blocks[:, 0], blocks[:, 1]
        logits = (uncond + cfg_scale * (cond - uncond)).reshape(-1, num_tokens, codebook_size)
    return logits / temperature if temperature > 0 else logits


def _float_mask(model, mask: torch.Tensor) -> torch.Tensor:
    core = unwrap(model)
    return additive_mask(mask.to(core.device), core.dtype)


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    return -(-u.clamp(min=1e-20).log()).clamp(min=1e-20).log()


@torch.no_grad()
def sample_maskgit(model, rows: torch.Tensor, mask: torch.Tensor, num_tokens: int, codebook_offset: int,
                   codebook_size: int, mask_id: int, timesteps: int, cfg_scale: float, temperature: float,
                   uniforms_per_image: torch.Tensor | None, on_step: Callable[[float], None] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [N, T] in [0, codebook_size), step_of_token [N, T], logprobs [N, T] fp32), all on CPU.

    `uniforms_per_image`: [N, maskgit_uniform_count(T, timesteps)] (float64, `uniform_stream`); None
    only when temperature <= 0 (greedy). on_step: called with the share of the steps done after each."""
    device = unwrap(model).device
    n, per = _rows_per_image(rows, cfg_scale)
    greedy = temperature <= 0
    if not greedy:
        if uniforms_per_image is None or uniforms_per_image.shape != (n, maskgit_uniform_count(num_tokens, timesteps)):
            raise ValueError(f"uniforms_per_image must be [{n}, {maskgit_uniform_count(num_tokens, timesteps)}]")
        uniforms = uniforms_per_image.to(device=device, dtype=torch.float64).view(n, timesteps, 2, num_tokens)
    ids = rows.to(device).clone()
    fmask = _float_mask(model, mask)
    length = ids.shape[1]
    image = slice(length - 1 - num_tokens, length - 1)
    ids[:, image] = mask_id
    codes = torch.zeros(n, num_tokens, dtype=torch.long, device=device)
    step_of = torch.full((n, num_tokens), -1, dtype=torch.long, device=device)
    logprobs = torch.zeros(n, num_tokens, dtype=torch.float32, device=device)
    schedule = masked_after_steps(num_tokens, timesteps)
    for step in range(timesteps):
        logp = image_scores(model, ids, fmask, num_tokens, codebook_offset, codebook_size, cfg_scale,
                            temperature, n).log_softmax(-1)
        if greedy:
            sampled = logp.argmax(-1)
        else:
            cdf = logp.double().exp().cumsum(-1)
            target = (uniforms[:, step, 0] * cdf[..., -1]).unsqueeze(-1)
            sampled = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=codebook_size - 1)
        lp = logp.gather(-1, sampled[..., None]).squeeze(-1)
        unknown = step_of < 0
        remask = torch.zeros_like(unknown)
        if schedule[step] > 0:
            confidence = lp.double().clamp(min=LOG_EPS)
            scale = max(temperature, 0.0) * (1.0 - (step + 1) / timesteps)
            if scale > 0:
                confidence = confidence + scale * _gumbel(uniforms[:, step, 1])
            confidence = confidence.masked_fill(~unknown, math.inf)
            order = confidence.argsort(dim=-1, stable=True)[:, : schedule[step]]
            remask.scatter_(1, order, True)
        reveal = unknown & ~remask
        codes = torch.where(reveal, sampled, codes)
        logprobs = torch.where(reveal, lp, logprobs)
        step_of = torch.where(reveal, torch.full_like(step_of, step), step_of)
        state = torch.where(step_of >= 0, codes + codebook_offset, torch.full_like(codes, mask_id))
        ids[:, image] = state.repeat(per, 1)
        if on_step is not None:
            on_step((step + 1) / timesteps)
    return codes.cpu(), step_of.cpu(), logprobs.cpu()


def _states(tokens: torch.Tensor, step_of: torch.Tensor, steps: list[int], codebook_offset: int,
            mask_id: int) -> torch.Tensor:
    """[len(steps), N, T] image ids before each step: tokens revealed earlier, the rest masked."""
    known = step_of[None] < torch.tensor(steps, device=step_of.device)[:, None, None]
    return torch.where(known, tokens[None] + codebook_offset, torch.full_like(known, mask_id, dtype=torch.long))


def trajectory_logprobs(model, rows: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                        step_of_token: torch.Tensor, codebook_offset: int, codebook_size: int, mask_id: int,
                        cfg_scale: float, temperature: float, with_entropy: bool = False,
                        steps_per_chunk: int = 4) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """[N, T] teacher-forced log-probs of `tokens` at their reveal steps (the sampler's numbers),
    differentiable; steps are stacked in the batch, `steps_per_chunk` at a time. with_entropy: also
    the [N, T] entropy of each token's distribution at its step (detached)."""
    device = unwrap(model).device
    n, per = _rows_per_image(rows, cfg_scale)
    tokens, step_of = tokens.to(device), step_of_token.to(device)
    num_tokens = tokens.shape[1]
    rows = rows.to(device)
    fmask = _float_mask(model, mask)
    length = rows.shape[1]
    image = slice(length - 1 - num_tokens, length - 1)
    logprobs = torch.zeros(n, num_tokens, dtype=torch.float32, device=device)
    entropy = torch.zeros_like(logprobs)
    steps = sorted(int(s) for s in step_of.unique().tolist())
    for i in range(0, len(steps), steps_per_chunk):
        chunk = steps[i: i + steps_per_chunk]
        k = len(chunk)
        ids = rows.repeat(k, 1)
        states = _states(tokens, step_of, chunk, codebook_offset, mask_id)
        ids[:, image] = states.repeat_interleave(per, 0).reshape(-1, num_tokens)
        scores = image_scores(model, ids, fmask.repeat(k, 1, 1, 1), num_tokens, codebook_offset,
                              codebook_size, cfg_scale, temperature, n).view(k, n, num_tokens, -1)
        logz = scores.logsumexp(-1)
        lp = scores.gather(-1, tokens[None, ..., None].expand(k, -1, -1, 1)).squeeze(-1) - logz
        here = step_of[None] == torch.tensor(chunk, device=device)[:, None, None]
        logprobs = logprobs + (lp * here).sum(0)
        if with_entropy:
            with torch.no_grad():
                log_p = scores - logz[..., None]
                entropy += (-(log_p.exp() * log_p).sum(-1) * here).sum(0)
    return (logprobs, entropy) if with_entropy else logprobs


def one_pass_logprobs(model, rows: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor, codebook_offset: int,
                      codebook_size: int, mask_id: int, cfg_scale: float, temperature: float,
                      uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs [N, T], masked [N, T] bool): one forward with a random share of the final tokens
    masked, as Show-o trains (share cos(pi/2 * u0), at least one token; which ones from u[1:]); log-probs
    of the masked tokens, 0 elsewhere. `uniforms` [N, T + 1] per image. Cheaper than the trajectory,
    but not the sampler's probabilities."""
    device = unwrap(model).device
    n, per = _rows_per_image(rows, cfg_scale)
    tokens = tokens.to(device)
    num_tokens = tokens.shape[1]
    u = uniforms.to(device=device, dtype=torch.float64)
    count = (num_tokens * torch.cos(u[:, :1] * math.pi * 0.5)).round().clamp(min=1)
    masked = u[:, 1:].argsort(-1) < count
    ids = rows.to(device).clone()
    length = ids.shape[1]
    state = torch.where(masked, torch.full_like(tokens, mask_id), tokens + codebook_offset)
    ids[:, length - 1 - num_tokens: length - 1] = state.repeat(per, 1)
    scores = image_scores(model, ids, _float_mask(model, mask), num_tokens, codebook_offset, codebook_size,
                          cfg_scale, temperature, n)
    lp = scores.gather(-1, tokens[..., None]).squeeze(-1) - scores.logsumexp(-1)
    return lp * masked, masked
