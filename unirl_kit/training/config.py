"""Trainer configs: one dataclass per recipe, YAML in configs/ plus `key=value` overrides.

The global batch is always `prompts_per_step x group_size` images, whatever the number of
processes: each rank takes `prompts_per_step / world` whole prompt groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from unirl_kit.backbones.config import BackboneConfig, SamplingConfig  # noqa: F401
from unirl_kit.config import check_ranges
from unirl_kit.tracking import DEFAULT_REPORT_TO, as_list, check_report_to, with_old_tensorboard_key
from unirl_kit.types import InputError

# The vocabularies of the trainers, each defined once; `check_ranges` refuses any other word, also in a
# config built in Python, with the dotted key in the message.
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
Target = Literal["gen", "und", "joint"]  # which head GRPO trains
RewardScale = Literal["group", "batch", "none"]  # the std an advantage is divided by
LogProb = Literal["guided", "conditional"]  # the distribution an image's log-prob is taken under
Schedule = Literal["constant", "warmup_cosine"]
SFTMode = Literal["und", "e2e", "gen-rs", "distill", "dpo"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
REWARD_SCALES: tuple[str, ...] = get_args(RewardScale)
SFT_MODES: tuple[str, ...] = get_args(SFTMode)


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # warmup_cosine decays to lr * this
    grad_clip: float = 1.0
    micro_batch: int = 16  # rows per forward/backward; gradients accumulate over the step's batch


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class RunConfig:
    out: str = "runs/train"
    seed: int = 0
    steps: int = 20
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    log_every: int = 1
    progress: bool = True  # a bar on a terminal; in a log (no terminal) a line every $UNIRL_LOG_EVERY_S seconds
    # where scalars go (TRL's word): jsonl (metrics.jsonl), tensorboard, wandb (unirl_kit/tracking.py); one
    # name alone or `none` also work and are saved as a list
    report_to: list[str] | str = field(default_factory=lambda: list(DEFAULT_REPORT_TO))
    tensorboard: bool | None = None  # the old key, read into report_to: false drops tensorboard, true keeps it

    def __post_init__(self) -> None:
        self.report_to = as_list(self.report_to)
        if self.tensorboard is not None:
            self.report_to = with_old_tensorboard_key(self.report_to, self.tensorboard, "run")
            self.tensorboard = None


@dataclass
class GRPOConfig:
    prompts: str = ""  # a `unirl prompts` file (or GenEval metadata JSONL)
    prompts_per_step: int = 4
    group_size: int = 4
    num_iterations: int = 1  # mu: passes over each sampled batch
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.0  # k3 KL weight; 0 keeps no reference model
    loss_type: LossType = "grpo"
    scale_rewards: RewardScale = "group"
    negative_weight: float = 1.0  # multiplies negative advantages (< 1 trusts a noisy judge's "worse" less)
    dynamic_sampling: bool = False  # DAPO: replace groups whose rewards all tie by newly drawn ones
    max_redraws: int = 4  # dynamic sampling: at most this many extra draws of prompts_per_step per step
    target: Target = "gen"
    logprob: LogProb = "guided"  # guided: the CFG mix sampled from; conditional: the cond. branch only
    gen_weight: float = 1.0
    und_weight: float = 1.0
    rewards: list[str] = field(default_factory=lambda: ["self-qa"])
    reward_options: dict = field(default_factory=dict)
    und_temperature: float = 1.0  # answers sampled for the `und` target
    und_max_new_tokens: int = 24
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    run: RunConfig = field(default_factory=RunConfig)


def check_grpo(cfg: GRPOConfig, world: int = 1) -> None:
    """Every invalid setting fails here, before a model is loaded or an image drawn."""
    check_ranges(cfg)
    if not cfg.prompts:
        raise InputError("grpo: prompts is empty; give a `unirl prompts` file (prompts=FILE)")
    if cfg.prompts_per_step % world:
        raise InputError(f"prompts_per_step ({cfg.prompts_per_step}) must divide by the {world} processes so "
                         "that every rank holds whole groups")
    if cfg.dynamic_sampling and cfg.target != "gen":
        raise InputError(f"dynamic_sampling: drops groups whose image rewards tie, so it needs target gen, "
                         f"got {cfg.target}")
    if cfg.dynamic_sampling and cfg.backbone.fsdp:  # each draw gathers the shards: a collective per draw
        raise InputError("dynamic_sampling: each rank redraws as often as its own groups tie, which FSDP's "
                         "gathers cannot follow; drop backbone.fsdp (or dynamic_sampling)")
    check_fsdp(cfg.backbone, cfg.lora, world)
    check_report_to(cfg.run.report_to, "run.report_to")


def check_fsdp(backbone: BackboneConfig, lora: LoraConfig, world: int) -> None:
    """FSDP shards over processes: one process has nothing to shard with, and LoRA (a small trained
    adapter on a frozen base) is not supported with it (adapter toggling and merging on shards)."""
    if not backbone.fsdp:
        return
    if world < 2:
        raise InputError("backbone.fsdp: shards the model over processes, but this run has 1; launch with "
                         "torchrun --nproc-per-node N (N >= 2) or drop backbone.fsdp")
    if lora.enabled:
        raise InputError("backbone.fsdp: not supported with lora.enabled (LoRA trains a small adapter; run it "
                         "without FSDP)")


@dataclass
class SFTConfig:
    """UniRL SFT (docs in unirl_kit/training/sft.py): the model trains on its own images.

    und: NLL of the ground-truth answer given the image and question (generation untouched);
    e2e: the same loss through a straight-through Gumbel-softmax into generation;
    gen-rs: next-token cross-entropy on the generated images whose reward reaches `threshold` and/or
    the `keep_top` best of each group (online self-RAFT);
    distill: the same loss on the `keep_top` best images of each prompt of a judged samples folder
    (`samples`: `unirl generate` + `unirl score`; offline self-RAFT), `prompts_per_step` images a step;
    dpo: Diffusion-DPO's loss on the same folder: each prompt's best image against its worst, relative to
    the frozen starting weights, `prompts_per_step` pairs a step.
    """

    prompts: str = ""  # not read by distill (its prompts are the samples folder's)
    samples: str = ""  # distill / dpo: a samples folder with scores.jsonl
    mode: SFTMode = "und"
    prompts_per_step: int = 4
    group_size: int = 4  # images per prompt; the global batch is prompts_per_step x group_size
    threshold: float | None = None  # gen-rs: keep images with reward >= threshold
    keep_top: int = 0  # gen-rs: keep the top k of each group by reward (self-RAFT / best-of-N); 0: off
    # gen-rs: the NLL of kept images under the distribution they were sampled from (guided: the CFG mix, so
    # sampling with guidance afterwards does not extrapolate twice) or the conditional branch alone
    logprob: LogProb = "guided"
    rewards: list[str] = field(default_factory=lambda: ["self-qa"])  # gen-rs: the filter; distill, dpo: the judge that scored `samples` (checked)
    reward_options: dict = field(default_factory=dict)
    gumbel_tau: float = 1.0  # e2e: Gumbel-softmax temperature
    # gen-rs / distill: each image token's NLL weighted by (1 - p)^focus, p the token's probability under the
    # policy (detached): the few tokens where the model was unsure (which colour, which shape, where) carry
    # the update, not the many it already predicts (background); 0 = the plain NLL
    focus: float = 0.0
    dpo_beta: float = 0.1  # dpo: beta of -log sigmoid(beta * (chosen - rejected log-ratio margin))
    und_weight: float = 1.0  # e2e: weight of the answer NLL
    gen_weight: float = 0.0  # e2e: weight of the conditional NLL of the sampled image tokens (0: off)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out="runs/sft"))


def check_sft(cfg: SFTConfig, world: int = 1) -> None:
    """Every invalid setting fails here, before a model is loaded or an image drawn."""
    check_ranges(cfg)
    if cfg.mode in ("distill", "dpo") and not cfg.samples:
        raise InputError(f"samples: mode {cfg.mode} trains on a judged samples folder (`unirl generate` then "
                         "`unirl score`); give samples=DIR")
    if cfg.mode == "distill":
        if not cfg.keep_top and cfg.threshold is None:
            raise InputError("mode distill keeps images by keep_top (the best k of each prompt) and/or threshold; "
                             "give one (keep_top=1)")
    elif cfg.mode != "dpo" and cfg.samples:
        raise InputError(f"samples: only modes distill and dpo read a samples folder; mode {cfg.mode} draws its own "
                         "images")
    elif cfg.mode != "dpo" and not cfg.prompts:
        raise InputError("sft: prompts is empty; give a `unirl prompts` file (prompts=FILE)")
    if cfg.prompts_per_step % world:
        raise InputError(f"prompts_per_step ({cfg.prompts_per_step}) must divide by the {world} processes")
    if cfg.mode == "gen-rs" and cfg.keep_top and cfg.keep_top >= cfg.group_size:
        raise InputError(f"keep_top: keeps the best k of each group of {cfg.group_size}, so 0 (off) <= k < "
                         f"group_size, got {cfg.keep_top}")
    if cfg.mode == "gen-rs" and cfg.threshold is None and not cfg.keep_top:
        raise InputError("mode gen-rs keeps images by threshold (reward >= threshold) and/or keep_top (the best k "
                         "of each group); give one (threshold=1.0 or keep_top=1)")
    if cfg.mode not in ("gen-rs", "distill") and (cfg.threshold is not None or cfg.keep_top):
        raise InputError(f"threshold / keep_top: only modes gen-rs and distill filter images; mode {cfg.mode} trains "
                         "on all of them (drop them or set mode=gen-rs)")
    if cfg.mode == "gen-rs" and not cfg.rewards:
        raise InputError("rewards: mode gen-rs needs at least one reward to filter images by")
    if cfg.mode == "e2e":
        from unirl_kit.backbones.base import DifferentiableImages
        from unirl_kit.registry import registry

        if not issubclass(registry("backbones").get(cfg.backbone.name), DifferentiableImages):
            raise InputError(f"mode: e2e needs a differentiable image path (generation_logits, decode_soft, "
                             f"answer_logprobs_from_pixels), which backbone {cfg.backbone.name!r} lacks; use mode=und")
    if cfg.mode != "e2e" and (cfg.und_weight != 1.0 or cfg.gen_weight != 0.0):
        raise InputError(f"und_weight / gen_weight: only mode e2e combines two losses; mode {cfg.mode} has one "
                         "(leave them at 1.0 / 0.0)")
    if cfg.focus != 0 and cfg.mode not in ("gen-rs", "distill"):
        raise InputError(f"focus: weights the image-token NLL of modes gen-rs and distill; mode {cfg.mode} has "
                         "none (leave it at 0)")
    if cfg.mode == "e2e" and cfg.und_weight == 0 and cfg.gen_weight == 0:
        raise InputError("e2e: und_weight and gen_weight are both 0; nothing to train")
    check_fsdp(cfg.backbone, cfg.lora, world)
    check_report_to(cfg.run.report_to, "run.report_to")
