"""Show-o's answers to questions about an image: autoregressive decoding under the MMU omni mask, and
teacher-forced per-token log-probs of given answers.

Rows come from `prompting.mmu_row` (<|mmu|> <|soi|> image <|eoi|> <|endoftext|> question ids); the
prefix up to <|eoi|> is attended fully, everything after causally (`prompting.mmu_attention_mask`),
padding (left, batch dependent) is hidden and does not shift position ids. Decoding uses a KV cache:
the prompt is encoded once with its 4D mask, then each new token attends every real key, which is the
same mask row as a full recompute. The official decoder samples over the whole vocabulary and stops
at <|endoftext|>; its demo decodes greedily (top_k=1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache

from unirl_kit.backbones.base import AnswerScores
from unirl_kit.backbones.showo.model import unwrap
from unirl_kit.backbones.showo.prompting import SpecialIds, mmu_batch


def _pick(logits: torch.Tensor, uniforms: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Greedy (uniforms None or temperature <= 0) or inverse-CDF sampling with one uniform per row."""
    if uniforms is None or temperature <= 0:
        return logits.argmax(-1)
    cdf = (logits.double() / temperature).softmax(-1).cumsum(-1)
    target = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def generate_answers(model, prompts: Sequence[Sequence[int]], special: SpecialIds, max_new_tokens: int,
                     uniforms: torch.Tensor | None = None, temperature: float = 1.0) -> list[list[int]]:
    """Answer ids per row, up to and without EOS: greedy (uniforms None), or sampled from
    softmax(logits / temperature) with `uniforms` [N, max_new_tokens] (one stream per row)."""
    device = unwrap(model).device
    ids, valid, pos, mask = (t.to(device) for t in mmu_batch(prompts, special))
    n = ids.shape[0]
    cache = DynamicCache(config=unwrap(model).showo.config)
    logits = model(ids, mask, position_ids=pos, cache=cache, keep=slice(-1, None))[:, -1].float()
    uniforms = None if uniforms is None else uniforms.to(device)
    answers: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    seen = valid
    for t in range(max_new_tokens):
        tok = _pick(logits, None if uniforms is None else uniforms[:, t], temperature)
        for i in (~done).nonzero().flatten().tolist():
            if int(tok[i]) != special.eos:
                answers[i].append(int(tok[i]))
        done |= tok == special.eos
        if bool(done.all()) or t + 1 == max_new_tokens:
            break
        seen = torch.cat([seen, torch.ones(n, 1, dtype=torch.bool, device=device)], dim=1)
        step_mask = seen[:, None, None, :]
        logits = model(tok[:, None], step_mask, position_ids=pos[:, -1:] + 1 + t, cache=cache)[:, -1].float()
    return answers


def greedy_answers(model, prompts: Sequence[Sequence[int]], special: SpecialIds,
                   max_new_tokens: int) -> list[list[int]]:
    """Argmax decoding, as the official MMU demo (top_k=1)."""
    return generate_answers(model, prompts, special, max_new_tokens)


def answer_logits(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                  special: SpecialIds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(full-vocabulary logits [N, A, V] fp32 predicting each answer token and the final EOS, mask
    [N, A], token ids [N, A] right-padded with PAD), one differentiable forward."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = unwrap(model).device
    targets = [list(a) + [special.eos] for a in answers]
    full = [list(p) + t for p, t in zip(prompts, targets, strict=True)]
    ids, _, pos, mask = (t.to(device) for t in mmu_batch(full, special))
    width = ids.shape[1]
    lengths = torch.tensor([len(t) for t in targets], device=device)
    a = int(lengths.max())
    j = torch.arange(a, device=device)[None]
    present = j < lengths[:, None]
    target_at = (width - lengths[:, None] + j).clamp(max=width - 1)  # where each answer token sits
    logits = model(ids, mask, position_ids=pos, keep=target_at - 1).float()
    token_ids = torch.where(present, ids.gather(1, target_at), torch.full_like(target_at, special.pad))
    return logits, present, token_ids


def answer_logprobs(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                    special: SpecialIds) -> AnswerScores:
    """Teacher-forced log-probs of each answer token and the closing EOS; differentiable."""
    logits, present, token_ids = answer_logits(model, prompts, answers, special)
    lp = logits.gather(-1, token_ids[..., None]).squeeze(-1) - logits.logsumexp(-1)
    return AnswerScores(logprobs=lp * present, mask=present, token_ids=token_ids)
