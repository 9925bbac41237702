"""The SFT job around the algorithm's steps (`sft.py`): set-up, resume, the step loop, checkpoints, export.

The same skeleton as `grpo_run`, with SFT's config check, rewards only for gen-rs, and a resume that
refuses checkpoints written by another recipe or another SFT mode.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from unirl_kit.config import write_run_info
from unirl_kit.training.common import (
    MetricsLog,
    build_optimizer,
    build_policy,
    check_out,
    export_final,
    init_processes,
)
from unirl_kit.training.config import SFTConfig, check_sft
from unirl_kit.training.state import load_train_state, save_train_state
from unirl_kit.types import InputError

COMMAND = "train sft"


def run_sft(cfg: SFTConfig, resume: bool = False) -> dict[str, Any]:
    """Train `run.steps` steps (continuing from the last checkpoint with resume); returns a summary."""
    rank, world = init_processes()
    check_sft(cfg, world)
    from unirl_kit.prompts.schema import read_prompts
    from unirl_kit.registry import registry
    from unirl_kit.rewards.base import build_rewards

    pool = read_prompts(Path(cfg.prompts))
    if not pool:
        raise InputError(f"{cfg.prompts}: no prompts")
    if cfg.mode == "gen-rs":
        for name in cfg.rewards:  # unknown names fail here, before the model loads
            registry("rewards").get(name.rpartition(":")[0] or name)
    out = check_out(cfg.run, resume)
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg.backbone, cfg.lora, keep_reference=False)
    reward = build_rewards(cfg.rewards, cfg.reward_options, policy.backbone) if cfg.mode == "gen-rs" else None
    optimizer = build_optimizer(policy.params, cfg.optim)
    state = load_train_state(out / "checkpoints", policy.model, optimizer) if resume else None
    if state is not None and (state.get("config"), state.get("mode")) != (COMMAND, cfg.mode):
        raise InputError(f"{out}/checkpoints were written by {state.get('config')!r} mode {state.get('mode')!r}, "
                         f"not {COMMAND!r} mode {cfg.mode!r}; resume with the same settings or use a new run.out")
    start = int(state["step"]) if state else 0
    if rank == 0:
        write_run_info(out, cfg, COMMAND)
    log = MetricsLog(out, start, cfg.run.tensorboard) if rank == 0 else None
    from unirl_kit.training.progress import StepProgress
    from unirl_kit.training.sft import train_step

    t0 = time.perf_counter()
    last: dict[str, Any] = {}
    with StepProgress(cfg.run.steps, start, enabled=cfg.run.progress and rank == 0) as progress:
        for step in range(start, cfg.run.steps):
            last = train_step(policy, optimizer, reward, pool, step, cfg, rank, world)
            if log is not None and (step + 1) % cfg.run.log_every == 0:
                log.write(last)
            progress.update(step + 1, last)
            if (step + 1) % cfg.run.checkpoint_every == 0 or step + 1 == cfg.run.steps:
                if rank == 0:
                    save_train_state(out / "checkpoints", step + 1, policy.trained_weights(), optimizer,
                                     {"config": COMMAND, "mode": cfg.mode}, cfg.run.keep_checkpoints)
                _barrier(world)
    if log is not None:
        log.close()
    final = export_final(policy, out) if rank == 0 else None
    summary = {"steps": cfg.run.steps, "mode": cfg.mode, "started_at": start,
               "seconds": round(time.perf_counter() - t0, 1), "final": str(final) if final else None, "last": last}
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
