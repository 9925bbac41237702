"""What both trainers share: processes, the policy on its device (replicated with DDP or sharded
with FSDP), optimizer and schedule, clipping, metrics rows, checkpoints (the final export: export.py; tracking: unirl_kit/tracking.py)."""

from __future__ import annotations

import atexit
import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unirl_kit.backbones.base import Backbone
from unirl_kit.distributed import rank_and_world
from unirl_kit.schedules import warmup_cosine
from unirl_kit.training.config import BackboneConfig, LoraConfig, OptimConfig, RunConfig
from unirl_kit.types import InputError


def init_processes() -> tuple[int, int]:
    """(rank, world) from the one source (`distributed.rank_and_world`): under torchrun / accelerate
    launch (their env vars) the trainers need a process group, so one is started (NCCL on GPUs, gloo
    on the CPU) unless the caller made its own; else (0, 1)."""
    if rank_and_world()[1] == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(end_processes)  # the group outlives one recipe (a script may train twice)
    return rank_and_world()


def end_processes() -> None:
    """Tear the process group down before the interpreter does, garbage first. FSDP-sharded modules
    (in reference cycles, holding the group's device mesh) still alive when the group goes made the
    process abort at exit ("terminate called without an active exception", SIGABRT) in 3 of 10 runs of
    shard + an object collective + destroy with gloo on the CPU; 0 of 10 with the modules collected
    first. The one CI failure of stop 24 (a rank of an FSDP test dying that way) matches it."""
    import gc

    import torch.distributed as dist

    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Policy:
    """The backbone being trained, what the optimizer sees, and how to get the reference policy."""

    backbone: Backbone
    params: list[torch.nn.Parameter]
    lora: bool
    reference: Any = None  # a frozen copy of the model (full fine-tuning with beta > 0)
    autocast: Any = field(default=contextlib.nullcontext)
    fsdp: bool = False  # model (and reference) sharded with FSDP2 (unirl_kit/training/fsdp.py)
    replicated: Any = None  # data parallel without FSDP: DDP over a `_Computation` holder of the model

    @property
    def model(self) -> torch.nn.Module:
        return self.backbone.model

    @contextlib.contextmanager
    def as_reference(self) -> Iterator[None]:
        """Inside, the backbone computes with the reference weights (adapters off, or the frozen copy)."""
        if self.lora:
            from unirl_kit.training.lora import adapters_disabled

            with adapters_disabled(self.model), torch.no_grad():
                yield
            return
        if self.reference is None:
            raise RuntimeError("no reference policy kept (beta = 0)")
        live = self.backbone.model
        self.backbone.model = self.reference
        try:
            with torch.no_grad():
                yield
        finally:
            self.backbone.model = live

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), a computation with the current model (the reference inside
        `as_reference`). Under FSDP it runs as a forward of the sharded root; replicated, a training
        forward runs through DDP, whose backward then all-reduces the gradients bucket by bucket while
        it computes. Either way every rank must make the same number of these calls."""
        if self.fsdp:
            from unirl_kit.training import fsdp

            return fsdp.call(self.model, lambda: fn(*args, **kwargs))
        if self.replicated is not None and torch.is_grad_enabled():
            return self.replicated(lambda: fn(*args, **kwargs))
        return fn(*args, **kwargs)

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward: gradients are synced over ranks only in the backward of the
        optimizer step's `last` one (DDP's no_sync before it, which a forward decides; FSDP syncs each)."""
        if self.replicated is None or last:
            return contextlib.nullcontext()
        return self.replicated.no_sync()

    def gathered(self) -> contextlib.AbstractContextManager:
        """Around sampling and model-based rewards (no grad): under FSDP the whole model is gathered
        once, so ranks may run different numbers of forwards; otherwise nothing."""
        if not self.fsdp:
            return contextlib.nullcontext()
        from unirl_kit.training import fsdp

        return fsdp.gathered(self.model)

    def trained_weights(self) -> dict[str, torch.Tensor]:
        """What checkpoints keep; under FSDP every rank calls and rank 0 gets the full tensors."""
        if self.fsdp:
            from unirl_kit.training import fsdp

            names = {n for n, p in self.model.named_parameters() if p.requires_grad}
            return fsdp.full_weights(self.model, names)
        if self.lora:
            from unirl_kit.training.lora import adapter_state_dict

            return adapter_state_dict(self.model)
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}


def build_policy(cfg: BackboneConfig, lora: LoraConfig, keep_reference: bool, world: int = 1) -> Policy:
    from unirl_kit.backbones.loading import load_backbone

    backbone = load_backbone(cfg.name, cfg.model, cfg.device, cfg.dtype, cfg.options)
    model = backbone.model
    if lora.enabled:
        from unirl_kit.training.lora import apply_lora

        params = apply_lora(model, lora)
    else:
        vq = getattr(getattr(model, "model", model), "vqmodel", None)
        model.requires_grad_(True)
        if vq is not None:  # the image tokenizer stays frozen, as in Janus
            vq.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
    reference = None
    if keep_reference and not lora.enabled:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if cfg.gradient_checkpointing:  # transformers 5.x renamed it; older ones have the first name only
        enable = getattr(model, "activation_checkpointing_enable", None) or getattr(
            model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise InputError(f"backbone.gradient_checkpointing: {type(model).__name__} does not support it")
        enable()
    if cfg.fsdp:  # after requires_grad and the reference copy: sharding turns parameters into DTensors
        from unirl_kit.training import fsdp

        fsdp.shard(model, backbone.device, world)
        params = [p for p in model.parameters() if p.requires_grad]  # the sharded ones replaced them
        if reference is not None:  # sharded too: a 7B replica per rank is what FSDP is there to avoid
            fsdp.shard(reference, backbone.device, world)
    model.train()
    use_bf16 = cfg.bf16 == "true" or (cfg.bf16 == "auto" and backbone.device.type == "cuda")
    autocast = (lambda: torch.autocast(backbone.device.type, dtype=torch.bfloat16)) if use_bf16 \
        else contextlib.nullcontext
    replicated = data_parallel(model, backbone.device) if world > 1 and not cfg.fsdp else None
    return Policy(backbone, params, lora.enabled, reference, autocast, fsdp=cfg.fsdp, replicated=replicated)


class _Computation(torch.nn.Module):
    """The model as DDP's module, whose forward is any computation with it: the backbones call the
    model's submodules (samplers, log-probs), never its own forward, and DDP hooks into a forward."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, thunk: Callable[[], Any]) -> Any:
        return thunk()


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over `model`: its trainable parameters' gradients averaged over ranks in the backward.
    Buffers are not broadcast (every rank loaded the same ones), so a forward starts no collective;
    parameters unused by a step (e.g. the generation head under the `und` target) are allowed."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # newer torch
    no_buffer_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(_Computation(model), device_ids=ids, find_unused_parameters=True,
                                   **no_buffer_sync)


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if not params:
        raise InputError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def learning_rate(step: int, total: int, cfg: OptimConfig) -> float:
    if cfg.schedule == "constant":
        return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    return warmup_cosine(step, total, cfg.warmup_steps, cfg.lr, floor=cfg.min_lr_ratio)


def optimizer_step(policy: Policy, optimizer: torch.optim.Optimizer, lr: float, cfg: OptimConfig,
                   world: int) -> float:
    """Clip, step; returns the gradient norm before clipping (over the whole model, also when FSDP holds
    the gradients as shards). Gradients arrive averaged over ranks: DDP's or FSDP's backward did it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    norm = torch.nn.utils.clip_grad_norm_(policy.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP: the global norm, replicated
        norm = norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def gather_floats(values: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate a 1-D float tensor over ranks, in rank order (equal lengths)."""
    if world == 1:
        return values
    import torch.distributed as dist

    parts = [torch.empty_like(values) for _ in range(world)]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def reward_columns(everything: torch.Tensor, records: list[dict[str, Any]], names: list[str]) -> dict[str, float]:
    """reward/mean and /std over the global batch, and each reward's mean/std over this rank's rows."""
    def std(x: torch.Tensor) -> float:
        return float(x.std()) if len(x) > 1 else 0.0

    row = {"reward/mean": float(everything.mean()), "reward/std": std(everything)}
    for name in names:  # rank 0 logs its own rows
        vals = torch.tensor([r["rewards"][name] for r in records])
        row[f"reward/{name}/mean"], row[f"reward/{name}/std"] = float(vals.mean()), std(vals)
    return row


def finish_row(row: dict[str, Any], update: dict[str, float], times: dict[str, float], images: int) -> dict[str, Any]:
    """The columns every trainer logs last: the update's numbers, the time split, images/s."""
    row.update({k: round(v, 8) for k, v in update.items()})
    row.update({f"time/{k}": round(v, 3) for k, v in times.items()})
    total = sum(times.values())
    row["images_per_s"] = round(images / total, 3) if total > 0 else 0.0
    return row


def check_out(run: RunConfig, resume: bool) -> Path:
    """A fresh run refuses an `out` holding checkpoints (say --resume)."""
    from unirl_kit.checkpoint import latest_checkpoint

    out = Path(run.out)
    has = latest_checkpoint(out / "checkpoints") is not None
    if has and not resume:
        raise InputError(f"{out} already holds checkpoints; pass --resume to continue it or give a new run.out")
    return out  # made by lock_output, which names a file standing where the folder should be


def answer_token_count(backbone: Any, answers: list[str]) -> int:
    """Tokens `answer_logprobs` scores for these answers: each answer's text tokens plus its EOS."""
    tok = backbone.tokenizer
    return sum(len(tok(a, add_special_tokens=False).input_ids) + 1 for a in answers)
