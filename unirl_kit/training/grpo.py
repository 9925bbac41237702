"""`unirl train grpo`: UniRL's GRPO as one recipe, read top to bottom (docs/grpo.md):

setup (`recipe.setup`: processes, policy and frozen reference, rewards, optimizer, resume), then per
training step the five steps of the algorithm, then checkpoint (`recipe.save_checkpoint`), the final
export (`recipe.finish`) and cleanup. The steps:

1. `sample_prompts`     - this step's prompts, drawn from the prompt file by (seed, step);
2. `generate_groups`    - `group_size` images per prompt with the current policy's fast sampler;
3. `score_groups`       - the configured rewards (and, for the `und` target, sampled answers graded);
                          with `dynamic_sampling` (DAPO), `informative_groups` replaces groups whose
                          rewards all tie by groups of newly drawn prompts, up to `max_redraws` draws;
4. `compute_advantages` - group-relative, over the global batch (whole groups, gathered over ranks);
5. `policy_update`      - `num_iterations` passes of the clipped policy-gradient loss (+ k3 KL).

Steps 1-3 are the shared rollout (`rollout.py`); the losses are pure functions (`grpo_math.py`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from unirl_kit.locking import holds_output_locks
from unirl_kit.training import recipe
from unirl_kit.training.common import (
    Policy,
    answer_token_count,
    finish_row,
    gather_floats,
    learning_rate,
    optimizer_step,
    reward_columns,
)
from unirl_kit.training.config import GRPOConfig, check_grpo
from unirl_kit.training.grpo_math import group_advantages, policy_loss
from unirl_kit.training.rollout import (
    Rollout,
    generate_groups,
    informative_groups,
    micro_slices,
    sample_prompts,
    score_groups,
)
from unirl_kit.types import PromptSpec, TrainingError


@holds_output_locks
def run_grpo(cfg: GRPOConfig, resume: bool = False) -> dict[str, Any]:
    """Train `run.steps` steps (continuing from the last checkpoint with resume); returns a summary."""
    with recipe.session(cfg, resume, check=check_grpo, stamp={"config": "train grpo"},
                        wants_rewards=cfg.target in ("gen", "joint"), keep_reference=cfg.beta > 0) as run:
        last = recipe.run_steps(run, lambda step: train_step(run.policy, run.optimizer, run.reward, run.pool, step,
                                                             cfg, run.rank, run.world))
        return recipe.finish(run, last)


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
    slices = micro_slices(n, cfg.optim.micro_batch)
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
    last = (targets[-1], len(slices) - 1)  # the micro-batch whose backward syncs gradients over ranks
    for _ in range(passes):
        for t in targets:
            for m, rows in enumerate(slices):
                with policy.accumulating(last=(t, m) == last), policy.autocast():  # as many on every rank
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
