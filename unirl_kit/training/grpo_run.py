"""`unirl train grpo`: the shared training job (`job.py`) around GRPO's step (`grpo.py`)."""

from __future__ import annotations

from typing import Any

from unirl_kit.training.config import GRPOConfig, check_grpo


def run_grpo(cfg: GRPOConfig, resume: bool = False) -> dict[str, Any]:
    """Train `run.steps` steps (continuing from the last checkpoint with resume); returns a summary."""
    from unirl_kit.training.grpo import train_step
    from unirl_kit.training.job import run_job

    return run_job(cfg, resume, check=check_grpo, stamp={"config": "train grpo"},
                   wants_rewards=cfg.target in ("gen", "joint"), keep_reference=cfg.beta > 0, train_step=train_step)
