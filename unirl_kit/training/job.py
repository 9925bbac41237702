"""The job around a trainer's step function, shared by GRPO and SFT: processes, checks, set-up,
resume (refusing another recipe's checkpoints), the step loop, metrics, checkpoints, export."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unirl_kit.backbones.base import resolve_cfg_scale
from unirl_kit.backbones.loading import no_transformers_bars
from unirl_kit.checkpoint import latest_checkpoint
from unirl_kit.config import check_same_run, to_dict, write_run_info
from unirl_kit.locking import holds_output_locks, lock_output
from unirl_kit.progress import Progress
from unirl_kit.tracking import Tracker
from unirl_kit.training.common import (
    Policy,
    build_optimizer,
    build_policy,
    check_out,
    init_processes,
)
from unirl_kit.training.export import export_final
from unirl_kit.training.state import load_train_state, save_train_state
from unirl_kit.types import InputError


@holds_output_locks
def run_job(cfg: Any, resume: bool, *, check: Callable[[Any, int], None], stamp: dict[str, str],
            wants_rewards: bool, keep_reference: bool, train_step: Callable[..., dict[str, Any]],
            load_pool: Callable[[Any], list] | None = None) -> dict[str, Any]:
    """Train `cfg.run.steps` steps with `train_step(policy, optimizer, reward, pool, step, cfg, rank, world)`.

    `pool` is the prompt file's prompts, or what `load_pool(cfg)` returns (SFT distill: the kept images).

    `stamp` (e.g. {"config": "train sft", "mode": "und"}) is saved in every checkpoint; a resume whose
    checkpoints carry another stamp, or whose settings differ from the run's config.yaml beyond what
    `RESUME_MAY_CHANGE` allows (unirl_kit/config.py), is refused. Rewards are built only when `wants_rewards`.
    """
    rank, world = init_processes()
    check(cfg, world)
    from unirl_kit.prompts.schema import read_prompts
    from unirl_kit.registry import registry
    from unirl_kit.rewards.base import build_rewards, parse_reward_spec

    pool: list = load_pool(cfg) if load_pool else read_prompts(Path(cfg.prompts))
    if not pool:
        raise InputError(f"{cfg.prompts}: no prompts")
    if wants_rewards:
        for spec in cfg.rewards:  # unknown names fail here, before the model loads
            registry("rewards").get(parse_reward_spec(spec)[0])
    out = check_out(cfg.run, resume)
    lock_output(out)
    resuming = resume and latest_checkpoint(out / "checkpoints") is not None
    unresolved = ("sampling.cfg_scale",) if cfg.sampling.cfg_scale is None else ()
    if resuming:  # the same run or none, before the model loads
        check_same_run(out, cfg, stamp["config"], unresolved)
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.backbone, cfg.lora, keep_reference=keep_reference, world=world)
    cfg.sampling.cfg_scale = resolve_cfg_scale(policy.backbone, cfg.sampling.cfg_scale)  # saved resolved
    if resuming and unresolved:
        check_same_run(out, cfg, stamp["config"])
    reward = build_rewards(cfg.rewards, cfg.reward_options, policy.backbone) if wants_rewards else None
    optimizer = build_optimizer(policy.params, cfg.optim)
    state = load_train_state(out / "checkpoints", policy.model, optimizer) if resume else None
    if state is not None and {k: state.get(k) for k in stamp} != stamp:
        found = {k: state.get(k) for k in stamp}
        raise InputError(f"{out}/checkpoints were written by {found}, not {stamp}; resume with the same settings "
                         "or use a new run.out")
    start = int(state["step"]) if state else 0
    if start > cfg.run.steps:  # config.yaml would claim a shorter run than the weights had
        raise InputError(f"run.steps={cfg.run.steps}: {out}/checkpoints already reached step {start}; a resume "
                         f"extends a run, so give run.steps >= {start}")
    if rank == 0:
        write_run_info(out, cfg, stamp["config"])
    t0 = time.perf_counter()
    last: dict[str, Any] = {}
    tracker = Tracker(out, cfg.run.report_to, start, to_dict(cfg), str(out)) if rank == 0 else None
    with tracker or contextlib.nullcontext(), Progress("train", cfg.run.progress and rank == 0,
                                                       transient=False) as progress:
        task = progress.task(stamp["config"], cfg.run.steps, "steps", completed=start)
        for step in range(start, cfg.run.steps):
            last = train_step(policy, optimizer, reward, pool, step, cfg, rank, world)
            if tracker is not None and (step + 1) % cfg.run.log_every == 0:
                tracker.log_scalars(step + 1, last)
            task.update(step + 1, step_info(last))
            if (step + 1) % cfg.run.checkpoint_every == 0 or step + 1 == cfg.run.steps:
                _checkpoint(policy, optimizer, out / "checkpoints", step + 1, stamp, cfg.run.keep_checkpoints, rank)
                _barrier(world)
    with no_transformers_bars():  # its shard-writing bar would be tqdm lines in a log file
        final = export_final(policy, out, cfg, stamp, rank, last)
    summary = {"steps": cfg.run.steps, **{k: v for k, v in stamp.items() if k != "config"}, "started_at": start,
               "seconds": round(time.perf_counter() - t0, 1), "final": str(final) if final else None, "last": last}
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def step_info(metrics: dict[str, Any]) -> str:
    """What the progress line shows of a step besides the count, rate and ETA: its reward or losses."""
    keys = [k for k in ("reward/mean", "und_reward/mean", "loss/gen", "loss/und", "loss/sft") if k in metrics]
    return " ".join(f"{k.split('/')[0] if k.endswith('mean') else k}={metrics[k]:.3f}" for k in keys)


def _checkpoint(policy: Policy, optimizer: torch.optim.Optimizer, root: Path, step: int, stamp: dict[str, str],
                keep: int, rank: int) -> None:
    """Rank 0 writes; under FSDP every rank first takes part in gathering the weights and optimizer."""
    if not policy.fsdp:
        if rank == 0:
            save_train_state(root, step, policy.trained_weights(), optimizer, stamp, keep)
        return
    from unirl_kit.training.fsdp import full_optimizer_state

    weights = policy.trained_weights()
    optim = full_optimizer_state(optimizer, keep=rank == 0)
    if rank == 0:
        save_train_state(root, step, weights, optimizer, stamp, keep, optimizer_state=optim)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
