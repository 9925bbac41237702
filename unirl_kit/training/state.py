"""Trainer checkpoints: weights (full model or LoRA adapter) in safetensors, optimizer, RNG and step
beside them (safetensors + JSON, never a pickle), written atomically (see unirl_kit.checkpoint), so
`--resume` continues exactly."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unirl_kit.checkpoint import latest_readable, read_state, save_checkpoint, weight_names
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
    A model sharded with FSDP takes the same files: each rank keeps its shards of the full tensors,
    which only rank 0 reads (see `_load_sharded`)."""
    from unirl_kit.training import fsdp

    if fsdp.is_sharded(model):
        return _load_sharded(root, model, optimizer)
    found = latest_readable(root)  # read whole first: a refused or torn checkpoint never touches the model
    if found is None:
        return None
    ckpt, state, weights = found
    params = dict(model.named_parameters())
    _check_names(ckpt, weights, model)
    with torch.no_grad():  # no collective, so this needs no process group
        for k, v in weights.items():
            params[k].copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return state


def _check_names(ckpt: Path, names: Iterable[str], model: torch.nn.Module) -> None:
    """Weights this model lacks mean another config wrote the checkpoint: refused before anything loads."""
    params = dict(model.named_parameters())
    unknown = [k for k in names if k not in params]
    if unknown:
        raise InputError(f"{ckpt}: weights {unknown[:3]} are not in this model; was it written by another "
                         "config (lora.enabled, backbone)? use a new run.out")


def _load_sharded(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Under FSDP (every rank calls) rank 0 alone reads the weights and optimizer state whole and DCP
    broadcasts each rank its shards: no rank but 0 ever holds a full copy. Rank 0 picks the checkpoint
    (a torn one skipped) and tells the others, which read its JSON state with the small tensors (RNG,
    as saved by rank 0 and applied on every rank, as without FSDP) and the weights' names, so every rank
    runs the same checks and returns the same state (its optimizer tensors shape-only off rank 0). A
    failure on any rank is shared before the next collective, so every rank raises and none hangs."""
    import torch.distributed as dist

    from unirl_kit.training import fsdp

    rank0, found, error = dist.get_rank() == 0, None, None
    if rank0:
        try:
            found = latest_readable(root)
            if found is not None:
                _check_names(found[0], found[2], model)
        except Exception as exc:  # raised again, on every rank, by from_rank0
            error = exc
    folder = fsdp.from_rank0(None if found is None else str(found[0]), error)
    if folder is None:
        return None
    state, weights = (found[1], found[2]) if found is not None else ({}, {})
    if not rank0:
        try:
            state = read_state(Path(folder), shapes_only=("optimizer",))
            _check_names(Path(folder), weight_names(Path(folder)), model)
        except Exception as exc:  # raised again, on every rank, by all_succeeded
            error = exc
    fsdp.all_succeeded(error)
    fsdp.load_weights(model, weights, from_rank0=True)
    fsdp.load_optimizer_state(model, optimizer, state["optimizer"], from_rank0=True)
    set_rng_state(state["rng"])
    return state
