"""LoRA on the language model, injected in place (peft), so every backbone method keeps working.

With LoRA the reference policy for the KL term is the base model itself: the adapters switched off
(`adapters_disabled`), so no second copy of the weights is kept.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch

from unirl_kit.training.config import LoraConfig
from unirl_kit.types import InputError


def language_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The text transformer LoRA adapts (Janus: model.model.language_model)."""
    inner = getattr(model, "model", model)
    lm = getattr(inner, "language_model", None)
    if lm is None:
        raise InputError(f"LoRA: {type(model).__name__} has no .model.language_model to adapt")
    return lm


def peft_config(model: torch.nn.Module, cfg: LoraConfig) -> Any:
    """The peft LoraConfig of `cfg` on the whole backbone module: `target_modules` becomes one regex under
    the language model's path, so training injects exactly what a saved adapter_config.json names (and
    `PeftModel.from_pretrained` on the same module adapts the same layers, not the vision tower's)."""
    from peft import LoraConfig as PeftLoraConfig

    lm = language_model_of(model)
    names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise InputError(f"lora.target_modules: {missing} not found in the language model; it has e.g. "
                         f"{', '.join(sorted(n for n in names if n.endswith('proj'))[:8])}")
    prefix = next(n for n, m in model.named_modules() if m is lm)
    targets = "|".join(re.escape(t) for t in cfg.target_modules)
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                          target_modules=rf"{re.escape(prefix)}\.(?:.*\.)?(?:{targets})")


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> list[torch.nn.Parameter]:
    """Freeze everything, add adapters to `target_modules` of the language model; returns their params."""
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    inject_adapter_in_model(peft_config(model, cfg), model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base model's outputs (the KL reference) while inside; adapters back on after."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
