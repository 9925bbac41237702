"""Atomic, resumable checkpoints: weights in safetensors, optimizer/scheduler/RNG/step beside them.

A checkpoint is a folder written under a temporary name and renamed into place, so a kill never
leaves a torn checkpoint; `latest_checkpoint` only ever sees complete ones.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(root: Path, step: int, model: torch.nn.Module | dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 2) -> Path:
    """root/step-N/{model.safetensors, state.pt}; older ones beyond `keep` are removed. `model` is a
    module (its whole state dict) or just the tensors to keep (e.g. a LoRA adapter's)."""
    root = Path(root)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = model if isinstance(model, dict) else model.state_dict()
    weights = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(_untie(weights), tmp / "model.safetensors")
    torch.save({**state, "step": step, "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(_steps(root))[:-keep] if keep > 0 else []:
        shutil.rmtree(root / f"step-{old:07d}", ignore_errors=True)
    return final


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): give each tensor its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in weights.items():
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _steps(root: Path) -> list[int]:
    if not Path(root).is_dir():
        return []
    return [int(m.group(1)) for p in Path(root).iterdir() if (m := _STEP_DIR.match(p.name))]


def latest_checkpoint(root: Path) -> Path | None:
    steps = _steps(root)
    return Path(root) / f"step-{max(steps):07d}" if steps else None


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into `model` (strict) and return the saved state (optimizer, step, ...)."""
    model.load_state_dict(load_file(Path(path) / "model.safetensors"), strict=True)
    state = torch.load(Path(path) / "state.pt", weights_only=True)
    torch.set_rng_state(state["torch_rng"])
    return state
