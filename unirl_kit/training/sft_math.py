"""SFT's pure pieces (no model, no processes): which rows gen-rs keeps, the straight-through
Gumbel-softmax of e2e, the focal weighting of gen-rs / distill and the DPO loss. `sft.py` explains
each mode; these are here so they are tested on plain tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def keep_rows(rewards: list[float], group_size: int, threshold: float | None, keep_top: int) -> list[int]:
    """Rows at or above `threshold`; with `keep_top`, of those only the k best of each group, and none of a
    group whose rewards all tie (the judge prefers none of its images). Ties inside the top k go to the
    earlier image, so the choice is deterministic."""
    ok = [threshold is None or r >= threshold for r in rewards]
    if not keep_top:
        return [i for i, good in enumerate(ok) if good]
    keep: list[int] = []
    for start in range(0, len(rewards), group_size):
        group = list(range(start, min(start + group_size, len(rewards))))
        values = [rewards[i] for i in group]
        if max(values) == min(values):
            continue
        best = sorted(group, key=lambda i: (-rewards[i], i))[:keep_top]
        keep += sorted(i for i in best if ok[i])
    return keep


def gumbel_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard Gumbel noise from its own CPU generator: the same on every device and batch layout."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return (-torch.log(-torch.log(u))).float()


def relaxed_tokens(logits: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """Straight-through Gumbel-softmax: one-hot of `tokens` forward, d softmax((logits + noise) / tau) backward."""
    soft = torch.softmax((logits.float() + noise) / tau, dim=-1)
    hard = F.one_hot(tokens, logits.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())  # bracketed: (hard + soft) - soft is not exactly hard in floats


def focused(logp: torch.Tensor, focus: float) -> torch.Tensor:
    """Per-row sums of token log-probs weighted by (1 - p)^focus (p = exp(logp), detached): focal loss."""
    if focus == 0:
        return logp.sum(-1)
    return ((1 - logp.detach().exp()).clamp_min(0) ** focus * logp).sum(-1)


def dpo_loss(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed -log sigmoid(beta * margin) over pairs, and the margins; rows alternate chosen, rejected."""
    ratio = policy_logp.float() - ref_logp.float()
    margin = ratio[0::2] - ratio[1::2]
    return -F.logsigmoid(beta * margin).sum(), margin.detach()
