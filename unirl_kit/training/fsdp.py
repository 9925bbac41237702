"""FSDP for the trainers (`backbone.fsdp=true`): FSDP2's in-place `fully_shard`, so the backbone's
module keeps its class and attributes (the samplers call submodules directly) while its parameters,
gradients and AdamW state become dim-0 shards (DTensors) spread over the ranks.

Layout: each transformer block (decoder layers, vision encoder layers) is one group, the root
(`backbone.model`) one more holding everything else (embeddings, heads, aligners, frozen VQ).
Transformers' gradient checkpointing wraps `forward`, inside FSDP's hooks, so the two combine.
Three ways in:

- training forwards go through `call(model, thunk)`: `thunk` runs as a registered FSDP forward method
  of the root, so the root's parameters are all-gathered before it and its gradients reduce-scattered
  after the backward, whichever submodules it touches; each layer all-gathers in its own forward
  and reduce-scatters its gradient (averaged over ranks, like `sync_gradients`). Every rank must
  therefore make the same sequence of these calls (equal micro-batch counts; the trainers ensure it);
- sampling and rewards run inside `gathered(model)`: the whole model is all-gathered once and kept
  so until the block ends. Sampling loops differ per rank (answers stop at EOS), so per-layer
  all-gathers there could not be matched across ranks; gathering once costs a full copy of the
  weights during generation (what a replicated model holds all the time) and no collective inside;
- checkpoints: `full_weights` / `full_optimizer_state` gather (every rank calls, rank 0 gets the
  tensors) into exactly the files a run without FSDP writes; `load_weights` / `load_optimizer_state`
  put full tensors back as this rank's shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from unirl_kit.types import InputError

_FORWARD = "unirl_fsdp_call"


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of every `*.layers` ModuleList (Janus: the language model's decoder layers and the
    vision tower's encoder layers; Show-o: showo.model.layers): each runs inside its parent's forward,
    so its all-gathers happen in the same order on every rank. Found without naming a backbone."""
    blocks = [block for name, m in model.named_modules()
              if isinstance(m, nn.ModuleList) and name.split(".")[-1] == "layers" for block in m
              if any(True for _ in block.parameters())]
    if not blocks:
        raise InputError(f"backbone.fsdp: {type(model).__name__} has no `layers` list of transformer blocks to "
                         "shard; train it without FSDP")
    return blocks


def shard(model: nn.Module, device: torch.device, world: int) -> None:
    """Apply `fully_shard` in place: transformer blocks first (one group each), then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if device.type == "cuda":  # FSDP communicates on the current CUDA device
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world,))
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    # the root stays gathered from its forward to its backward (it is needed first in the backward)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    setattr(model, _FORWARD, _run)
    register_fsdp_forward_method(model, _FORWARD)
    with torch.no_grad():  # FSDP initialises lazily at the first forward, and that must be the root's;
        call(model, lambda: None)  # sampling calls submodules (blocks) directly, so do one now


def _run(thunk: Callable[[], Any]) -> Any:
    return thunk()


def is_sharded(model: nn.Module) -> bool:
    if not torch.distributed.is_available():  # builds without torch.distributed have no FSDP either
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def call(model: nn.Module, thunk: Callable[[], Any]) -> Any:
    """thunk() as a forward of the sharded root; without grad the root is freed after. The one input is
    a closure, so FSDP's input handling (moving tensors in dataclasses to the device) touches nothing."""
    out = getattr(model, _FORWARD)(thunk)
    if not torch.is_grad_enabled():  # no backward will free it
        model.reshard()
    return out


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Inside, every parameter is whole and stays so across forwards: no collective happens, so ranks
    may run different numbers of forwards (sampling). For no-grad use only."""
    modules = _fsdp_modules(model)
    for m in modules:  # the same order on every rank: model.modules() is deterministic
        m.unshard()
    model.set_reshard_after_forward(False, recurse=True)
    try:
        yield
    finally:
        model.set_reshard_after_forward(True, recurse=True)
        model.set_reshard_after_forward(False, recurse=False)  # the root's training setting
        for m in modules:
            m.reshard()


def is_sharded_tensor(t: Any) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_weights(model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The full state dict (or the `names` in it) on the CPU of rank 0, {} elsewhere; every rank calls."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in state.items() if names is None or k in names}


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool) -> dict[str, Any]:
    """`optimizer.state_dict()` with each sharded tensor gathered whole (the layout a run without FSDP
    saves: integer parameter ids); every rank calls, in the same order, and only `keep` holds the result."""
    state = optimizer.state_dict()
    out: dict[int, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        full = {}
        for key, value in entry.items():
            value = value.full_tensor() if is_sharded_tensor(value) else value
            full[key] = value.cpu() if keep and isinstance(value, torch.Tensor) else value
        if keep:
            out[idx] = full
    return {"state": out, "param_groups": state["param_groups"]} if keep else {}


def _shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's shard of `full`, laid out as the sharded `param` (every rank holds `full`: no comms)."""
    full = full.to(param.device)
    if not is_sharded_tensor(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into the parameters of the same names (this rank's shards when sharded)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(_shard_like(v.to(params[k].dtype), params[k]))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full (unsharded) optimizer state dict into an optimizer over sharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in state["param_groups"] for i in group["params"]]
    by_id = dict(zip(ids, params, strict=True))
    sharded = {idx: {k: _shard_like(v, by_id[idx]) if isinstance(v, torch.Tensor) and v.shape == by_id[idx].shape
                     else v for k, v in entry.items()} for idx, entry in state["state"].items()}
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})
