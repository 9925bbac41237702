"""`unirl train sft`: the shared training job (`job.py`) around SFT's step (`sft.py`); a resume refuses
checkpoints written by another recipe or another SFT mode."""

from __future__ import annotations

from typing import Any

from unirl_kit.training.config import SFTConfig, check_sft


def run_sft(cfg: SFTConfig, resume: bool = False) -> dict[str, Any]:
    """Train `run.steps` steps (continuing from the last checkpoint with resume); returns a summary."""
    from unirl_kit.training.job import run_job
    from unirl_kit.training.sft import train_step

    return run_job(cfg, resume, check=check_sft, stamp={"config": "train sft", "mode": cfg.mode},
                   wants_rewards=cfg.mode == "gen-rs",  # distill's images were judged by `unirl score`
                   keep_reference=cfg.mode == "dpo", train_step=train_step,
                   load_pool={"distill": _kept_images, "dpo": _pairs}.get(cfg.mode))


def _kept_images(cfg: SFTConfig) -> list:
    """Offline self-RAFT's data: the judge's best images of the samples folder."""
    from pathlib import Path

    from unirl_kit.training.distill_data import load_kept

    return load_kept(Path(cfg.samples), cfg.keep_top, cfg.threshold)


def _pairs(cfg: SFTConfig) -> list:
    """DPO's data: each prompt's best and worst image by the judge."""
    from pathlib import Path

    from unirl_kit.training.distill_data import load_pairs

    return load_pairs(Path(cfg.samples))
