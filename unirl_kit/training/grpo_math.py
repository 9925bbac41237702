"""The pure numerics of GRPO: group-relative advantages, the clipped surrogate loss, k3 KL, entropy.

Kept free of models, data and distributed state so each formula can be checked token for token
against TRL's `GRPOTrainer` (see tests/test_grpo_math.py), and so the trainer stays a thin loop.
"""

from __future__ import annotations

import torch

from unirl_kit.training.config import LOSS_TYPES, REWARD_SCALES


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages `(r - group mean) / (std + eps)` for group-major rewards, and a per-row zero-std flag.

    `std` is the group's unbiased std ("group"), the whole batch's ("batch"), or no division ("none"),
    as in TRL. A group whose rewards are all equal carries no signal: its advantages are set to exactly
    zero and its rows flagged, whatever `scale` is. (TRL leaves rounding residue there, ~6e-4 for eight
    float32 0.7s, and its isclose(std, 0) check then misses the tie.)
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}: a group of one has no baseline")
    n = rewards.numel()
    if n == 0 or n % group_size != 0:
        raise ValueError(
            f"{n} rewards cannot be split into groups of {group_size}: "
            "N must be a positive multiple of group_size (rows ordered group-major)"
        )
    if scale not in REWARD_SCALES:
        raise ValueError(f"scale must be one of {REWARD_SCALES}, got {scale!r}")
    r = rewards if rewards.is_floating_point() else rewards.float()
    bad = (~torch.isfinite(r)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(
            f"reward at index {i} is not finite ({r[i].item()}); score or drop that sample first"
        )

    grouped = r.reshape(-1, group_size)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (r.std() + eps)
    tied = grouped.amax(dim=1) == grouped.amin(dim=1)  # (G,)
    adv = adv.masked_fill(tied.unsqueeze(1), 0.0).reshape(-1)
    return adv, tied.repeat_interleave(group_size)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref): `exp(ref - logp) - (ref - logp) - 1`, >= 0, unbiased under pi."""
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    loss_type: str = "grpo",
    max_tokens: int | None = None,
    num_items: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate GRPO loss (plus `beta` * k3 KL) over a (B, T) batch, and detached stats.

    `mask` is 0/1 over completion tokens. Padded positions of the inputs are replaced by 0 before any
    arithmetic, so garbage there (e.g. -inf) can neither leak NaN into the loss nor into gradients.
    No gradient-accumulation scaling is applied: that is the trainer's business.
    `num_items` ("dapo") is the token count of the whole global batch (all ranks, all accumulation
    steps), so that summed/averaged gradients equal sum / total tokens.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(logp.shape)} like logp")
    b, t_len = logp.shape
    if advantages.shape != (b,):
        raise ValueError(f"advantages must be (B,) = ({b},), got shape {tuple(advantages.shape)}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta != 0.0 and ref_logp is None:
        raise ValueError(
            f"beta={beta} adds a KL penalty, which needs ref_logp (the reference model's log-probs)"
        )
    eps_high = epsilon if epsilon_high is None else epsilon_high
    if epsilon < 0 or eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got epsilon={epsilon}, epsilon_high={epsilon_high}")

    keep = mask.bool()
    m = mask.to(logp.dtype)
    logp = logp.masked_fill(~keep, 0.0)
    # Old and reference log-probs are constants of the objective; a stray graph would corrupt gradients.
    old = old_logp.detach().masked_fill(~keep, 0.0)
    adv = advantages.detach().to(logp.dtype).unsqueeze(1)

    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        kl = k3_kl(logp, ref_logp.detach().masked_fill(~keep, 0.0))
        per_token = per_token + beta * kl
    loss = _aggregate(per_token * m, m, loss_type, max_tokens, num_items)

    with torch.no_grad():
        count = m.sum().clamp(min=1.0)

        def masked_mean(x: torch.Tensor) -> torch.Tensor:
            return (x.to(m.dtype) * m).sum() / count

        # TRL's "region" clip: the clipped term was the one min() chose and it differs from the raw one.
        low = (ratio < 1 - epsilon) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        stats = {
            "ratio_mean": masked_mean(ratio),
            "clip_ratio": masked_mean(low | high),
            "clip_ratio_low": masked_mean(low),
            "clip_ratio_high": masked_mean(high),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl)
    return loss, stats


def _aggregate(
    masked: torch.Tensor, m: torch.Tensor, loss_type: str, max_tokens: int | None, num_items: float | None
) -> torch.Tensor:
    """Reduce masked per-token losses to a scalar with the loss type's normalizer (as TRL, no accumulation)."""
    b, t_len = masked.shape
    if loss_type == "grpo":
        return (masked.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / m.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        width = t_len if max_tokens is None else max_tokens
        if width < t_len or width <= 0:
            raise ValueError(f"max_tokens={max_tokens} must be >= the sequence length T={t_len} (and > 0)")
        return masked.sum() / (b * width)
    total = m.sum() if num_items is None else torch.as_tensor(num_items, dtype=m.dtype, device=m.device)
    return masked.sum() / total.clamp(min=1.0)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Shannon entropy (nats) over the last axis, per position; chunked so a (B, T, V) softmax never exists whole.

    Half-precision logits are upcast to float32. Masked-out (-inf) logits contribute 0, not NaN.
    """
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    parts = []
    for chunk in flat.split(chunk_size, dim=0):
        p = torch.softmax(chunk, dim=-1)
        parts.append(-torch.special.xlogy(p, p).sum(-1))
    if not parts:
        return flat.new_zeros(shape)
    return torch.cat(parts).reshape(shape)
