"""Rollouts: the images (and answers) a training step learns from, shared by both recipes.

- `sample_prompts`: this step's prompts, drawn by (seed, step), split over ranks in whole groups;
- `generate_groups`: `group_size` images per prompt with the current policy, seeded per image, so the
  rank layout never changes what is drawn;
- `judge`: the configured rewards on those images, with the model in eval mode (and gathered whole
  under FSDP, since a model-based reward runs forwards of its own);
- GRPO's rollout on top: `score_groups` (rewards, and for the `und` target the sampled answers,
  graded) and DAPO's dynamic sampling `informative_groups`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from unirl_kit.backbones.base import GenerationBatch, image_seed
from unirl_kit.prompts.answers import grade_answer
from unirl_kit.prompts.qa import question_and_truth
from unirl_kit.rewards.base import RewardOutput, Sample
from unirl_kit.training.common import Policy
from unirl_kit.training.config import GRPOConfig, SFTConfig
from unirl_kit.types import PromptSpec

TrainConfig = GRPOConfig | SFTConfig  # both have prompts_per_step, group_size, run.seed, sampling


@dataclasses.dataclass
class Rollout:
    """One rank's share of a GRPO step: its prompts, their images, rewards and (und target) answers."""

    specs: list[PromptSpec]
    offset: int  # index of this rank's first prompt in the global batch
    batch: GenerationBatch
    rewards: torch.Tensor  # [N] weighted total of the configured rewards
    records: list[dict[str, Any]]
    questions: list[str] = dataclasses.field(default_factory=list)
    answers: list[str] = dataclasses.field(default_factory=list)
    und_rewards: torch.Tensor | None = None


def sample_prompts(pool: list[PromptSpec], step: int, cfg: TrainConfig, rank: int, world: int, draw: int = 0
                   ) -> tuple[list[PromptSpec], int]:
    """(this rank's prompts, offset): `prompts_per_step` drawn by (seed, step), split in whole groups.
    `draw` > 0: dynamic sampling's replacement draws of the same step, each from its own stream."""
    rng = np.random.default_rng([cfg.run.seed, 7, step] + ([draw] if draw else []))
    n = cfg.prompts_per_step
    picks = rng.choice(len(pool), size=n, replace=len(pool) < n)
    per = n // world
    mine = picks[rank * per: (rank + 1) * per]
    return [pool[int(i)] for i in mine], rank * per


@contextlib.contextmanager
def sampling_mode(policy: Policy) -> Iterator[None]:
    """No grad, eval mode (no dropout, e.g. LoRA's: the policy is the eval-mode model), the whole model
    gathered under FSDP, autocast as training uses it."""
    was_training = policy.model.training
    policy.model.eval()
    try:
        with torch.no_grad(), policy.gathered(), policy.autocast():
            yield
    finally:
        policy.model.train(was_training)


def generate_groups(policy: Policy, specs: list[PromptSpec], offset: int, step: int, cfg: TrainConfig,
                    draw: int = 0) -> GenerationBatch:
    """Image k of global prompt p at step s is drawn from seed (run.seed, s, p, k): rank layout never matters.
    Replacement draws (`draw` > 0) have seeds of their own."""
    base = image_seed(cfg.run.seed, step, (1 << 20) + (draw << 8))
    seeds = [[image_seed(base, offset + p, k) for k in range(cfg.group_size)] for p in range(len(specs))]
    s = cfg.sampling
    with sampling_mode(policy):
        return policy.backbone.generate([sp.prompt for sp in specs], group_size=cfg.group_size, seeds=seeds,
                                        cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=s.top_k,
                                        top_p=s.top_p)


def samples_of(specs: list[PromptSpec], offset: int, batch: GenerationBatch, group_size: int) -> list[Sample]:
    """What a reward sees of each image: its prompt, pixels, tokens, global prompt index, index in group."""
    return [Sample(specs[i // group_size], batch.images[i], batch.tokens[i], offset + i // group_size,
                   i % group_size) for i in range(len(batch))]


def judge(policy: Policy, reward: Any, samples: list[Sample]) -> RewardOutput:
    """The configured rewards of `samples` (a model-based reward, e.g. self-qa, runs the policy)."""
    with sampling_mode(policy):
        return reward(samples)


def score_groups(policy: Policy, reward: Any, specs: list[PromptSpec], offset: int, batch: GenerationBatch,
                 step: int, cfg: GRPOConfig) -> Rollout:
    """GRPO's step 3: the rewards (gen, joint) and the sampled, graded answers (und, joint)."""
    samples = samples_of(specs, offset, batch, cfg.group_size)
    rollout = Rollout(specs, offset, batch, torch.zeros(len(batch)), [{} for _ in samples])
    if cfg.target in ("gen", "joint"):
        out = judge(policy, reward, samples)
        rollout.rewards, rollout.records = torch.tensor(out.scores, dtype=torch.float32), out.details
    if cfg.target in ("und", "joint"):
        rollout.questions = [question_and_truth(s.spec)[0] for s in samples]
        seed = image_seed(cfg.run.seed, step, (1 << 21) + offset)
        with torch.no_grad(), policy.gathered(), policy.autocast():
            rollout.answers = policy.backbone.answer(batch.images, rollout.questions, cfg.und_max_new_tokens,
                                                     greedy=False, seed=seed, temperature=cfg.und_temperature)
        rollout.und_rewards = torch.tensor([grade_answer(s.spec, a).score for s, a in
                                            zip(samples, rollout.answers, strict=True)], dtype=torch.float32)
    return rollout


def tied_groups(rewards: torch.Tensor, group_size: int) -> list[bool]:
    """Per group: do all its rewards tie (no signal for a group-relative advantage)?"""
    groups = rewards.view(-1, group_size)
    return (groups.max(dim=1).values == groups.min(dim=1).values).tolist()


def informative_groups(policy: Policy, reward: Any, pool: list[PromptSpec], step: int, cfg: GRPOConfig, rank: int,
                       world: int) -> tuple[Rollout, int]:
    """DAPO's dynamic sampling, per rank: keep the groups whose rewards differ, and draw new prompts (and
    their groups) for the tied ones, at most `max_redraws` more times; groups still missing are filled
    with tied ones (zero advantage), so every rank trains on as many rows as without it. Returns the
    rollout and the number of draws made."""
    k = cfg.group_size
    kept: list[tuple[PromptSpec, GenerationBatch, slice, torch.Tensor, list]] = []
    spare: list[tuple[PromptSpec, GenerationBatch, slice, torch.Tensor, list]] = []
    need = cfg.prompts_per_step // world
    draws = 0
    for draw in range(cfg.max_redraws + 1):
        specs, offset = sample_prompts(pool, step, cfg, rank, world, draw)
        batch = generate_groups(policy, specs, offset, step, cfg, draw)
        got = score_groups(policy, reward, specs, offset, batch, step, cfg)
        draws += 1
        for g, tied in enumerate(tied_groups(got.rewards, k)):
            rows = slice(g * k, (g + 1) * k)
            (spare if tied else kept).append((specs[g], batch, rows, got.rewards[rows], got.records[rows]))
        if len(kept) >= need:
            break
    chosen = (kept + spare)[:need]
    merged = GenerationBatch(
        images=[im for _, b, rows, _, _ in chosen for im in b.images[rows]],
        tokens=torch.cat([b.tokens[rows] for _, b, rows, _, _ in chosen]),
        logprobs=torch.cat([b.logprobs[rows] for _, b, rows, _, _ in chosen]),
        seeds=[s for _, b, rows, _, _ in chosen for s in b.seeds[rows]],
        trajectory=None if chosen[0][1].trajectory is None else torch.cat([b.trajectory[rows] for _, b, rows, _, _ in chosen]))
    rollout = Rollout([c[0] for c in chosen], rank * need, merged, torch.cat([c[3] for c in chosen]),
                      [r for c in chosen for r in c[4]])
    return rollout, draws


def micro_slices(n: int, size: int) -> list[slice]:
    """Rows 0..n-1 in micro-batches of `size` (the last may be shorter)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]
