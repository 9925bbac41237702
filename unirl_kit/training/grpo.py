"""`unirl train grpo`: UniRL's GRPO, one function per step of the algorithm (docs/grpo.md):

1. `sample_prompts`     - this step's prompts, drawn from the prompt file by (seed, step);
2. `generate_groups`    - `group_size` images per prompt with the current policy's fast sampler;
3. `score_groups`       - the configured rewards (and, for the `und` target, sampled answers graded);
                          with `dynamic_sampling` (DAPO), `informative_groups` replaces groups whose
                          rewards all tie by groups of newly drawn prompts, up to `max_redraws` draws;
4. `compute_advantages` - group-relative, over the global batch (whole groups, gathered over ranks);
5. `policy_update`      - `num_iterations` passes of the clipped policy-gradient loss (+ k3 KL).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from unirl_kit.backbones.base import GenerationBatch, image_seed
from unirl_kit.prompts.answers import grade_answer
from unirl_kit.prompts.qa import question_and_truth
from unirl_kit.rewards.base import Sample
from unirl_kit.training.common import (
    Policy,
    answer_token_count,
    finish_row,
    gather_floats,
    learning_rate,
    optimizer_step,
    reward_columns,
)
from unirl_kit.training.config import GRPOConfig
from unirl_kit.training.grpo_math import group_advantages, policy_loss
from unirl_kit.types import PromptSpec, TrainingError


@dataclasses.dataclass
class Rollout:
    """One rank's share of a step: its prompts, their images, rewards and (und target) answers."""

    specs: list[PromptSpec]
    offset: int  # index of this rank's first prompt in the global batch
    batch: GenerationBatch
    rewards: torch.Tensor  # [N] weighted total of the configured rewards
    records: list[dict[str, Any]]
    questions: list[str] = dataclasses.field(default_factory=list)
    answers: list[str] = dataclasses.field(default_factory=list)
    und_rewards: torch.Tensor | None = None


def sample_prompts(pool: list[PromptSpec], step: int, cfg: GRPOConfig, rank: int, world: int, draw: int = 0
                   ) -> tuple[list[PromptSpec], int]:
    """(this rank's prompts, offset): `prompts_per_step` drawn by (seed, step), split in whole groups.
    `draw` > 0: dynamic sampling's replacement draws of the same step, each from its own stream."""
    rng = np.random.default_rng([cfg.run.seed, 7, step] + ([draw] if draw else []))
    n = cfg.prompts_per_step
    picks = rng.choice(len(pool), size=n, replace=len(pool) < n)
    per = n // world
    mine = picks[rank * per: (rank + 1) * per]
    return [pool[int(i)] for i in mine], rank * per


def generate_groups(policy: Policy, specs: list[PromptSpec], offset: int, step: int, cfg: GRPOConfig,
                    draw: int = 0) -> GenerationBatch:
    """Image k of global prompt p at step s is drawn from seed (run.seed, s, p, k): rank layout never matters.
    Replacement draws (`draw` > 0) have seeds of their own."""
    base = image_seed(cfg.run.seed, step, (1 << 20) + (draw << 8))
    seeds = [[image_seed(base, offset + p, k) for k in range(cfg.group_size)] for p in range(len(specs))]
    s = cfg.sampling
    was_training = policy.model.training
    policy.model.eval()  # no dropout (e.g. LoRA's) while sampling: the policy is the eval-mode model
    try:
        with torch.no_grad(), policy.gathered(), policy.autocast():
            return policy.backbone.generate([sp.prompt for sp in specs], group_size=cfg.group_size, seeds=seeds,
                                            cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=s.top_k,
                                            top_p=s.top_p)
    finally:
        policy.model.train(was_training)


def score_groups(policy: Policy, reward, specs: list[PromptSpec], offset: int, batch: GenerationBatch, step: int,
                 cfg: GRPOConfig) -> Rollout:
    k = cfg.group_size
    samples = [Sample(specs[i // k], batch.images[i], batch.tokens[i], offset + i // k, i % k)
               for i in range(len(batch))]
    rollout = Rollout(specs, offset, batch, torch.zeros(len(batch)), [{} for _ in samples])
    if cfg.target in ("gen", "joint"):
        was_training = policy.model.training
        policy.model.eval()
        try:
            with torch.no_grad(), policy.gathered(), policy.autocast():
                out = reward(samples)
                totals, rollout.records = out.scores, out.details
        finally:
            policy.model.train(was_training)
        rollout.rewards = torch.tensor(totals, dtype=torch.float32)
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


def informative_groups(policy: Policy, reward, pool: list[PromptSpec], step: int, cfg: GRPOConfig, rank: int,
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


def compute_advantages(rewards: torch.Tensor, cfg: GRPOConfig, rank: int, world: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(this rank's advantages, its zero-std flags, all ranks' rewards): computed on the gathered batch,
    so 1 process and N processes see the same numbers."""
    everything = gather_floats(rewards, world)
    adv, zero = group_advantages(everything, cfg.group_size, cfg.scale_rewards)
    if cfg.negative_weight != 1.0:  # a noisy judge's "worse than the group" is the less reliable half
        adv = torch.where(adv < 0, adv * cfg.negative_weight, adv)
    per = len(rewards)
    return adv[rank * per: (rank + 1) * per], zero[rank * per: (rank + 1) * per], everything


def _micro_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _gen_terms(policy: Policy, rollout: Rollout, rows: slice, cfg: GRPOConfig):
    k = cfg.group_size
    prompts = [rollout.specs[i // k].prompt for i in range(rows.start, rows.stop)]
    tokens = rollout.batch.tokens[rows]
    s = cfg.sampling
    scale = s.cfg_scale if cfg.logprob == "guided" else 1.0  # 1: the conditional rows alone
    trajectory = None if rollout.batch.trajectory is None else rollout.batch.trajectory[rows]
    logp, entropy = policy.backbone.image_logprobs(prompts, tokens, scale, s.temperature, with_entropy=True,
                                                   trajectory=trajectory)
    return logp, torch.ones_like(logp, dtype=torch.bool), entropy


def _und_terms(policy: Policy, rollout: Rollout, rows: slice):
    scores = policy.backbone.answer_logprobs(rollout.batch.images[rows], rollout.questions[rows],
                                             rollout.answers[rows])
    return scores.logprobs, scores.mask, None


def _reference_and_old(policy: Policy, rollout: Rollout, slices: list[slice], cfg: GRPOConfig, terms) -> dict:
    """Per micro-batch: the old policy's log-probs (mu > 1) and the reference's (beta > 0), no grad."""
    out: dict[str, list] = {"old": [], "ref": []}
    for rows in slices:
        if cfg.num_iterations > 1:
            with torch.no_grad(), policy.autocast():
                out["old"].append(policy.call(terms, rows)[0].detach())
        if cfg.beta > 0:
            with policy.as_reference(), policy.autocast():
                out["ref"].append(policy.call(terms, rows)[0].detach())
    return out


def policy_update(policy: Policy, optimizer, rollout: Rollout, advantages: dict[str, torch.Tensor], step: int,
                  cfg: GRPOConfig, world: int) -> dict[str, float]:
    """`num_iterations` optimizer steps on this batch; per target its own advantages and loss."""
    n = len(rollout.batch)
    slices = _micro_slices(n, cfg.optim.micro_batch)
    targets = {"gen": ["gen"], "und": ["und"], "joint": ["gen", "und"]}[cfg.target]
    weights = {"gen": cfg.gen_weight if cfg.target == "joint" else 1.0,
               "und": cfg.und_weight if cfg.target == "joint" else 1.0}
    terms = {"gen": lambda rows: _gen_terms(policy, rollout, rows, cfg), "und": lambda rows: _und_terms(policy, rollout, rows)}
    fixed = {t: _reference_and_old(policy, rollout, slices, cfg, terms[t]) for t in targets}
    lr = learning_rate(step, cfg.run.steps, cfg.optim)
    stats: dict[str, float] = {}
    tokens = {t: _count_tokens(policy, rollout, t) for t in targets}  # this rank's
    dapo_items = {t: float(gather_floats(torch.tensor([float(tokens[t])]), world).sum()) / world for t in targets} \
        if cfg.loss_type == "dapo" else {}  # global-batch tokens / world: gradients are averaged over ranks
    passes = cfg.num_iterations
    for _ in range(passes):
        for t in targets:
            for m, rows in enumerate(slices):
                with policy.autocast():  # every rank has as many rows, so as many micro-batches (FSDP)
                    logp, mask, entropy = policy.call(terms[t], rows)
                old = fixed[t]["old"][m] if cfg.num_iterations > 1 else logp.detach()
                ref = fixed[t]["ref"][m] if cfg.beta > 0 else None
                loss, st = policy_loss(logp.float(), old.float(), advantages[t][rows], mask, epsilon=cfg.epsilon,
                                       epsilon_high=cfg.epsilon_high, beta=cfg.beta,
                                       ref_logp=None if ref is None else ref.float(), loss_type=cfg.loss_type,
                                       num_items=dapo_items.get(t))
                frac = (rows.stop - rows.start) / n  # this micro-batch's share of the rows
                share = {"dapo": 1.0, "bnpo": float(mask.sum()) / max(tokens[t], 1)}.get(cfg.loss_type, frac)
                scaled = loss * share * weights[t]
                if not torch.isfinite(scaled):
                    raise TrainingError(f"step {step + 1}: {t} loss is {float(loss.detach())} (micro-batch {m}); training "
                                        f"stopped; the last good checkpoint is under {cfg.run.out}/checkpoints")
                scaled.backward()
                _add(stats, f"loss/{t}", float(loss.detach()) * share / passes)
                for key, value in st.items():
                    _add(stats, f"{key}/{t}", float(value) * frac / passes)
                if entropy is not None:
                    _add(stats, f"entropy/{t}", float(entropy.mean()) * frac / passes)
        norm = optimizer_step(policy, optimizer, lr, cfg.optim, world)
        _add(stats, "grad_norm", norm / passes)
    stats["lr"] = lr
    return stats


def _count_tokens(policy: Policy, rollout: Rollout, target: str) -> int:
    """Scored tokens of this rank's rows: image tokens, or answer tokens + EOS (as answer_logprobs scores)."""
    if target == "gen":
        return rollout.batch.tokens.numel()
    return answer_token_count(policy.backbone, rollout.answers)


def _add(stats: dict, key: str, value: float) -> None:
    stats[key] = stats.get(key, 0.0) + value


def step_metrics(step: int, rollout: Rollout, all_rewards: torch.Tensor, zero: dict[str, torch.Tensor],
                 update: dict[str, float], times: dict[str, float], names: list[str], cfg: GRPOConfig) -> dict:
    """One metrics.jsonl row: rewards per reward, zero-std share, KL, clipping, entropy, grad norm, lr, times."""
    row: dict[str, Any] = {"step": step + 1}
    if cfg.target in ("gen", "joint"):
        row.update(reward_columns(all_rewards, rollout.records, names))
    if rollout.und_rewards is not None:
        row["und_reward/mean"] = float(rollout.und_rewards.mean())
    for t, flags in zero.items():
        row[f"zero_std_share/{t}"] = float(flags.float().mean())
    return finish_row(row, update, times, len(rollout.batch))


def train_step(policy: Policy, optimizer, reward, pool: list[PromptSpec], step: int, cfg: GRPOConfig,
               rank: int, world: int) -> dict[str, Any]:
    """Steps 1-5 for one training step; returns its metrics row."""
    times = {}
    t0 = time.perf_counter()
    draws = 1
    if cfg.dynamic_sampling:  # generation and scoring interleave: both timed as "generate"
        rollout, draws = informative_groups(policy, reward, pool, step, cfg, rank, world)
        times["generate"] = time.perf_counter() - t0
    else:
        specs, offset = sample_prompts(pool, step, cfg, rank, world)
        batch = generate_groups(policy, specs, offset, step, cfg)
        times["generate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rollout = score_groups(policy, reward, specs, offset, batch, step, cfg)
        times["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    advantages, zero = {}, {}
    all_rewards = rollout.rewards  # replaced by the gathered batch when rewards are computed
    if cfg.target in ("gen", "joint"):
        advantages["gen"], zero["gen"], all_rewards = compute_advantages(rollout.rewards, cfg, rank, world)
    if rollout.und_rewards is not None:
        advantages["und"], zero["und"], _ = compute_advantages(rollout.und_rewards, cfg, rank, world)
    update = policy_update(policy, optimizer, rollout, advantages, step, cfg, world)
    times["update"] = time.perf_counter() - t0
    row = step_metrics(step, rollout, all_rewards, zero, update, times, getattr(reward, "names", []), cfg)
    if cfg.dynamic_sampling:
        row["draws"] = int(gather_floats(torch.tensor([float(draws)]), world).sum())
    return row

