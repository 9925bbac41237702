"""Which backbone, loaded how (`backbone.*`), and how it draws images (`sampling.*`): one shape for every stage.

Generate, score, eval understanding, serve, the trainers and the loop all spell these settings the same
way (`backbone.name=janus backbone.model=DIR backbone.options.KEY=V sampling.cfg_scale=5`) and load the
model through the one `build_backbone`. No torch import here: configs resolve before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from unirl_kit.types import InputError


@dataclass
class SamplingConfig:
    cfg_scale: float | None = None  # 1 = no guidance; None = the backbone's own (resolve_cfg_scale)
    temperature: float = 1.0  # 0 = greedy where a stage allows it (not the trainers: a group would tie)
    top_k: int | None = None
    top_p: float | None = None


@dataclass
class BackboneConfig:
    """The trainers' defaults (float32 weights); the inference stages start from `inference_backbone()`."""

    name: str = "tiny-shapes"
    model: str | None = None  # folder, hub id or LoRA adapter folder; None: the backbone's own default
    options: dict = field(default_factory=dict)  # more constructor options, e.g. chat_template, timesteps
    device: str = "auto"  # auto: this rank's GPU if any, else cpu
    dtype: str = "float32"  # auto: bfloat16 on GPU, float32 on CPU; trainers keep float32 (bf16 autocast is `bf16`)
    # training only (TRAINING_ONLY): refused by the inference stages, which would silently ignore them
    bf16: Literal["auto", "true", "false"] = "auto"  # autocast: auto = on for CUDA, off on CPU
    gradient_checkpointing: bool = False
    # Shard weights, gradients and AdamW state over the processes (FSDP2) instead of one full replica
    # per rank; needs >= 2 processes and full fine-tuning (see check_fsdp and training/fsdp.py)
    fsdp: bool = False


TRAINING_ONLY = ("bf16", "gradient_checkpointing", "fsdp")

# The flat keys of generate / score / eval understanding before issue 19, and where each moved; old config
# files, overrides and saved config.yaml files are read through these (unirl_kit.config.translate_moved).
MOVED_BACKBONE_KEYS: dict[str, str] = {"backbone": "backbone.name", "model": "backbone.model",
                                       "backbone_options": "backbone.options", "device": "backbone.device",
                                       "dtype": "backbone.dtype"}
MOVED_SAMPLING_KEYS: dict[str, str] = {k: f"sampling.{k}" for k in ("cfg_scale", "temperature", "top_k", "top_p")}


def inference_backbone() -> BackboneConfig:
    """The default of a stage that only runs the model: weights in bfloat16 on a GPU, float32 on the CPU."""
    return BackboneConfig(dtype="auto")


def check_inference(cfg: BackboneConfig, stage: str) -> None:
    """A training-only setting given to a stage that does not train fails rather than being ignored."""
    defaults = BackboneConfig()
    for name in TRAINING_ONLY:
        if getattr(cfg, name) != getattr(defaults, name):
            raise InputError(f"backbone.{name}: a training setting; {stage} does not use it (drop it)")


def build_backbone(cfg: BackboneConfig) -> Any:
    """The configured backbone, for every stage that loads one; an unknown name fails first, with close
    matches, before torch loads (backbones/loading.py resolves device and dtype and checks the folder)."""
    from unirl_kit.registry import registry

    registry("backbones").get(cfg.name)
    from unirl_kit.backbones.loading import load_backbone

    return load_backbone(cfg.name, cfg.model, cfg.device, cfg.dtype, cfg.options)
