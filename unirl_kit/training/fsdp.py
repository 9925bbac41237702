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
  and reduce-scatters its gradient (averaged over ranks, as DDP averages the replicated path). Every rank must
  therefore make the same sequence of these calls (equal micro-batch counts; the trainers ensure it);
- sampling and rewards run inside `gathered(model)`: the whole model is all-gathered once and kept
  so until the block ends. Sampling loops differ per rank (answers stop at EOS), so per-layer
  all-gathers there could not be matched across ranks; gathering once costs a full copy of the
  weights during generation (what a replicated model holds all the time) and no collective inside;
- checkpoints go through `torch.distributed.checkpoint.state_dict` (DCP): `full_weights` /
  `full_optimizer_state` gather (every rank calls, rank 0 gets the tensors) into exactly the files a
  run without FSDP writes, and `load_weights` / `load_optimizer_state` put those full tensors back as
  this rank's shards: on a resume only rank 0 reads the tensors (`from_rank0=True`) and DCP broadcasts
  them, each rank keeping its shards, so no other rank holds a full copy of the weights and AdamW state
  (the other ranks read only the checkpoint's JSON, its small tensors and the weights' names; failures
  are shared first with `from_rank0` / `all_succeeded`, so no rank waits in a collective a failed rank
  never makes). DCP names optimizer state by parameter name, the files by integer id (the
  layout of `optimizer.state_dict()`): `names_to_ids` / `ids_to_names` convert, so a checkpoint
  written with or without FSDP resumes either way.
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


def full_weights(model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The full state dict (or the `names` in it) on the CPU of rank 0, {} elsewhere; every rank calls."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in state.items() if names is None or k in names}


def optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The name in `model` of each parameter the optimizer holds, group by group: the optimizer may hold
    a subset (the frozen VQ is left out), and its order is what gives each one its integer id."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def names_to_ids(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """A DCP optimizer state dict (keyed by parameter name) in `optimizer.state_dict()`'s layout: the
    integer ids 0, 1, ... in param_groups order, which the checkpoints of runs without FSDP have."""
    ids = {n: i for i, n in enumerate(n for group in names for n in group)}
    return {"state": {ids[n]: entry for n, entry in state["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in state["param_groups"]]}


def ids_to_names(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """`names_to_ids` undone for an optimizer over these parameters. Like `Optimizer.load_state_dict`, the
    saved ids are matched to the parameters by position, group by group (whatever ids the file uses)."""
    sizes = [len(g["params"]) for g in state["param_groups"]]
    if sizes != [len(group) for group in names]:
        raise InputError(f"the checkpoint's optimizer has parameter groups of sizes {sizes}, this one "
                         f"{[len(group) for group in names]}; was it written by another config?")
    name_of = {i: n for g, group in zip(state["param_groups"], names, strict=True)
               for i, n in zip(g["params"], group, strict=True)}
    return {"state": {name_of[i]: entry for i, entry in state["state"].items()},
            "param_groups": [{**g, "params": [name_of[i] for i in g["params"]]} for g in state["param_groups"]]}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, keep: bool) -> dict[str, Any]:
    """The optimizer state with each shard gathered whole, on the CPU, in the layout a run without FSDP
    saves (integer ids); every rank calls (the same collectives in the same order), and `keep`, which
    must be rank 0 (the only rank DCP hands the gathered tensors), gets it; {} elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not keep:
        return {}
    if not state:
        raise RuntimeError("full_optimizer_state: keep=True on a rank other than 0, which receives nothing")
    return names_to_ids(state, optimizer_param_names(model, optimizer))


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], from_rank0: bool = False) -> None:
    """Full tensors into a sharded model, each becoming this rank's shard; the parameters `weights` lacks
    (the frozen VQ) keep their values. `from_rank0` (every rank calls): only rank 0's `weights` are read
    (the others may pass {}: they never loaded the file) and DCP broadcasts them one by one."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=from_rank0)
    given = weights if _holds_tensors(from_rank0) else {}
    set_model_state_dict(model, dict(given), options=options)  # DCP adds the model's other entries to the dict


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         from_rank0: bool = False) -> None:
    """A full optimizer state in the integer-id layout into an optimizer over sharded parameters, ending
    exactly as `optimizer.load_state_dict` would on a model without FSDP. `from_rank0` (every rank calls):
    DCP broadcasts rank 0's tensors; elsewhere only the structure of `state` is used (its param groups and
    which ids have state, the same on every rank), so its tensors may be shape-only stand-ins."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    by_name = ids_to_names(state, optimizer_param_names(model, optimizer))  # checked on every rank alike
    # strict=False: a parameter that never had a gradient (the understanding head in a generation-only
    # run) has no state in the file
    options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=from_rank0)
    set_optimizer_state_dict(model, optimizer, by_name if _holds_tensors(from_rank0) else {}, options=options)
    _as_plain_load(optimizer, state)


def _holds_tensors(from_rank0: bool) -> bool:
    """Whether this rank's state dict is the one DCP loads: every rank's, or with `from_rank0` rank 0's
    alone (the others must pass {}, to receive)."""
    return not from_rank0 or torch.distributed.get_rank() == 0


def from_rank0(value: Any, error: Exception | None) -> Any:
    """Rank 0's `value` on every rank (every rank calls; pickled, so small things only). When rank 0
    failed (`error`) every rank raises instead of going on to collectives rank 0 will never make: rank 0
    its own error, the others its message (an InputError for an InputError)."""
    box = [(value, _describe(error))]
    torch.distributed.broadcast_object_list(box, src=0)
    value, failure = box[0]
    _raise(error, failure)
    return value


def all_succeeded(error: Exception | None) -> None:
    """Every rank calls, with what failed on it (None: nothing): if any rank failed, every rank raises
    (its own error, else the first failed rank's message), so none waits for a rank that gave up."""
    failures: list[tuple[bool, str] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(failures, _describe(error))
    _raise(error, next((f for f in failures if f is not None), None))


def _describe(error: Exception | None) -> tuple[bool, str] | None:
    """What another rank needs to raise the same: whether it is an InputError (the user's to fix), its text."""
    if error is None:
        return None
    if isinstance(error, InputError):
        return True, str(error)
    return False, f"{type(error).__name__}: {error}"


def _raise(error: Exception | None, failure: tuple[bool, str] | None) -> None:
    """This rank's own error first (its traceback intact), else another rank's as described."""
    if error is not None:
        raise error
    if failure is not None:
        is_input, message = failure
        raise InputError(message) if is_input else RuntimeError(f"another rank failed: {message}")


def _as_plain_load(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Undo what DCP's loading does differently: it first steps the empty optimizer once (lr 0, zero
    grads) so that every parameter has state, and it rebuilds tuples (AdamW's betas) as lists. Left so,
    a parameter without saved state would resume at step 1 (other bias correction once it gets a
    gradient) and the next checkpoint would differ from a run without FSDP."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [i for g in state["param_groups"] for i in g["params"]]
    for param, i in zip(params, saved, strict=True):
        if i not in state["state"]:
            optimizer.state.pop(param, None)
    for group, g in zip(optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: v for k, v in g.items() if k != "params"})
