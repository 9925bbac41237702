"""The loop's config. Training settings live in the trainers' own configs (`grpo_config`, `sft_config`)
plus per-loop overrides, so a loop round trains exactly as `unirl train grpo` would."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from unirl_kit.backbones.config import BackboneConfig, SamplingConfig
from unirl_kit.config import check_ranges, load_config
from unirl_kit.distributed import rank_and_world
from unirl_kit.tracking import DEFAULT_REPORT_TO, as_list, check_report_to
from unirl_kit.training.config import GRPOConfig, SFTConfig
from unirl_kit.types import GENEVAL_TAGS, InputError


@dataclass
class LoopConfig:
    out: str = "runs/loop"
    rounds: int = 1
    seed: int = 0
    world: str = "shapes"
    train: Literal["grpo", "sft", "both", "raft"] = "grpo"  # both: SFT, then GRPO from its result; raft: offline self-RAFT (sft_config)
    train_prompts: str | None = None  # default: drawn here, n_train prompts with train_shares per tag
    # share per tag of the drawn training prompts; held out from the eval set where a tag's prompts allow,
    # else the eval set's own prompts of that tag with other image seeds (the report names those tags).
    # null: held-out prompts only, spread evenly over the tags that have any left (before issue 20)
    train_shares: dict[str, float] | None = field(default_factory=lambda: dict.fromkeys(GENEVAL_TAGS, 1.0))
    eval_prompts: str | None = None  # default: drawn here (n_eval, eval_seed)
    n_train: int = 300
    n_eval: int = 60
    train_seed: int = 1
    eval_seed: int = 1234
    eval_group_size: int = 2
    batch_size: int = 32  # images per sampler call when evaluating
    detector: str = "shapes"
    detector_options: dict = field(default_factory=dict)  # e.g. {model: DIR} for mask2former
    rewards: list[str] = field(default_factory=lambda: ["self-qa"])  # scored on each round's eval images
    reward_options: dict = field(default_factory=dict)
    understanding: list[str] = field(default_factory=lambda: ["clean", "geneval_correct", "imbalance"])
    understanding_per_tag: int = 20
    grpo_config: str | None = None  # a `unirl train grpo` config; None: GRPOConfig defaults (tiny-shapes)
    grpo_overrides: list[str] = field(default_factory=list)  # e.g. ["run.steps=30", "optim.lr=2e-5"]
    sft_config: str | None = None
    sft_overrides: list[str] = field(default_factory=list)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    progress: bool = True
    # where each round's eval metrics and sample grid go, passed on as the trainers' run.report_to; jsonl
    # stays in: the report reads each round's train/metrics.jsonl (unirl_kit/tracking.py)
    report_to: list[str] | str = field(default_factory=lambda: list(DEFAULT_REPORT_TO))

    def __post_init__(self) -> None:
        self.report_to = as_list(self.report_to)


def check_loop(cfg: LoopConfig) -> None:
    """Every setting, the trainers' included, before any work (round 0 evaluates for minutes first)."""
    check_ranges(cfg)
    check_report_to(cfg.report_to, "report_to")
    if "jsonl" not in cfg.report_to:
        raise InputError(f"report_to: {cfg.report_to} leaves out jsonl, which the loop's report reads (each round's "
                         "train/metrics.jsonl); keep it, e.g. report_to=[jsonl,wandb]")
    _check_detector(cfg)
    if rank_and_world()[1] > 1:
        raise InputError("unirl loop runs in one process (its stages share one model and one folder); under "
                         "torchrun run the stages themselves: generate, eval geneval, score, train grpo|sft")
    if cfg.train in ("grpo", "both"):
        _check_trainer(GRPOConfig, cfg.grpo_config, cfg.grpo_overrides, "grpo")
    if cfg.train != "grpo":
        _check_trainer(SFTConfig, cfg.sft_config, cfg.sft_overrides, "sft")


def _check_detector(cfg: LoopConfig) -> None:
    """The eval detector fits the world and has its required options (else a traceback after round 0's images)."""
    from unirl_kit.registry import registry, required_options

    if cfg.detector == "shapes" and cfg.world != "shapes":
        raise InputError(f"detector: shapes reads only the shapes world's renders; world {cfg.world} needs a real "
                         "detector (detector=mask2former detector_options.model=DIR)")
    missing = required_options(registry("detectors").get(cfg.detector), cfg.detector_options)
    if missing:
        raise InputError(f"detector_options.{missing[0]}: detector {cfg.detector} needs it "
                         f"(detector_options.{missing[0]}=...)")


def _check_trainer(cls: type, config_file: str | None, overrides: list[str], recipe: str) -> None:
    """A trainer's config file and overrides resolve to valid numbers; the error says whose settings."""
    try:
        check_ranges(load_config(cls, Path(config_file) if config_file else None, {}, overrides))
    except InputError as exc:
        raise InputError(f"{recipe}_config / {recipe}_overrides: {exc}") from None
