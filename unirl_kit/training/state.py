"""Trainer checkpoints: weights (full model or LoRA adapter) in safetensors, optimizer, RNG and step
beside them (safetensors + JSON, never a pickle), written atomically (see unirl_kit.checkpoint), so
`--resume` continues exactly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirl_kit.checkpoint import latest_readable, save_checkpoint
from unirl_kit.types import InputError


def rng_state() -> dict[str, Any]:
    """Every generator training draws from (tuples, arrays and tensors: what `save_state` keeps exactly)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state` saved, so a resumed run draws what the uninterrupted one would have."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(root: Path, step: int, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                     extra: dict[str, Any], keep: int, optimizer_state: dict[str, Any] | None = None) -> Path:
    """root/step-N/{model.safetensors, state.safetensors, state.json}; `weights` are what training changes. `optimizer_state`
    replaces `optimizer.state_dict()` when given (FSDP: the shards gathered whole, the same layout)."""
    optim = optimizer.state_dict() if optimizer_state is None else optimizer_state
    state = {"optimizer": optim, "rng": rng_state(), "weight_keys": sorted(weights), **extra}
    return save_checkpoint(root, step, weights, state, keep=keep)


def load_train_state(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Restore the latest readable checkpoint under `root` (a torn newest one is skipped with a warning)
    into model/optimizer/RNG; None when there is none.
    A model sharded with FSDP takes the same files: each rank keeps its shards of the full tensors."""
    from unirl_kit.training import fsdp

    found = latest_readable(root)  # read whole first: a refused or torn checkpoint never touches the model
    if found is None:
        return None
    ckpt, state, weights = found
    params = dict(model.named_parameters())
    unknown = [k for k in weights if k not in params]
    if unknown:
        raise InputError(f"{ckpt}: weights {unknown[:3]} are not in this model; was it written by another "
                         "config (lora.enabled, backbone)? use a new run.out")
    if fsdp.is_sharded(model):
        fsdp.load_weights(model, weights)
        fsdp.load_optimizer_state(model, optimizer, state["optimizer"])
    else:  # no collective, so this needs no process group
        with torch.no_grad():
            for k, v in weights.items():
                params[k].copy_(v)
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state
