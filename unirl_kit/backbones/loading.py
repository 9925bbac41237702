"""Shared loading rules for HF-style backbone folders: file checks, device and dtype choice.

A bad `--model` path should fail before minutes of weight loading, with the missing files named.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from unirl_kit.jsonl import read_json
from unirl_kit.types import InputError

# Each entry: what a checkpoint needs, as alternatives (any one of them will do).
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "config": ("config.json",),
    "weights": ("model.safetensors", "model.safetensors.index.json"),
    "tokenizer": ("tokenizer.json", "tokenizer.model"),
    "processor": ("processor_config.json", "preprocessor_config.json"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def is_hub_id(model: str) -> bool:
    """"org/name" that is not a local path: fetched by transformers where a network exists."""
    return bool(_HUB_ID.match(model)) and not Path(model).exists()


def missing_files(path: Path) -> list[str]:
    """The required files (or alternatives) absent from `path`, plus shards an index names but lacks."""
    path = Path(path)
    missing = [" or ".join(alts) for alts in REQUIRED_FILES.values() if not any((path / a).is_file() for a in alts)]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index)  # not UTF-8 or malformed: one line naming the index
        if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
            raise InputError(f"{index}: not a valid safetensors index (no weight_map); re-save the model")
        shards = sorted({str(s) for s in weight_map["weight_map"].values()})
        missing += [s for s in shards if not (path / s).is_file()]
    return missing


def check_model_dir(path: Path, model_type: str, hint: str) -> None:
    """Fail with one line if `path` is not a complete HF-style checkpoint of `model_type`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"--model {path}: no such folder; {hint}")
    missing = missing_files(path)
    if missing:
        bin_note = " (found PyTorch .bin weights: re-save with safetensors)" if any(path.glob("*.bin")) else ""
        raise InputError(f"--model {path}: incomplete checkpoint, missing {', '.join(missing)}{bin_note}; "
                         "expected a folder written by save_pretrained (model + processor)")
    config = read_json(path / "config.json")  # not UTF-8, malformed, too deep: one line naming the file
    if not isinstance(config, dict):
        raise InputError(f"{path / 'config.json'}: not a JSON object; expected a model config (re-save the model)")
    found = config.get("model_type")
    if found != model_type:
        raise InputError(f"{path / 'config.json'}: model_type is {found!r}, not {model_type!r}; {hint}")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings off for a block: its load report prints a table of missing and unexpected
    tensors, which check_tensor_names turns into one line instead."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or Inf, else None. One isfinite pass and
    a single device sync: cheap next to loading, and a corrupt weight otherwise shows up only as NaN
    images, answers or losses later."""
    floats = [(name, t) for name, t in tensors.items() if t.is_floating_point()]
    if not floats:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).cpu()
    bad = (~finite).nonzero()
    return floats[int(bad[0])][0] if len(bad) else None


def weights_file(folder: Path, tensor: str, candidates: Iterable[str] = ("model.safetensors",)) -> Path:
    """The file of a model folder that holds `tensor`: its shard in model.safetensors.index.json, else the
    first of `candidates` present (the folder itself when none is: a hub id, say)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    try:
        shard = json.loads(index.read_text()).get("weight_map", {}).get(tensor) if index.is_file() else None
    except (OSError, ValueError, AttributeError):  # an unreadable index: name the folder's own file
        shard = None
    if shard:
        return folder / shard
    return next((folder / c for c in candidates if (folder / c).is_file()), folder)


def check_finite_weights(tensors: Mapping[str, torch.Tensor], folder: Path,
                         candidates: Iterable[str] = ("model.safetensors",)) -> None:
    """A one-line InputError naming the file and tensor when any weight of a loaded folder is NaN or Inf."""
    bad = first_non_finite(tensors)
    if bad is not None:
        raise InputError(f"{weights_file(folder, bad, candidates)}: tensor {bad!r} holds NaN or Inf; the weights "
                         "are corrupt (re-export or re-download the model)")


def check_tensor_names(folder: Path, missing: Iterable[str], unexpected: Iterable[str]) -> None:
    """A model folder must hold exactly the model's tensors: a missing one would be silently randomly
    initialised (transformers only warns "newly initialized"), an unexpected one means another model."""
    for names, what in ((sorted(missing), "lack tensor {}, which would be left randomly initialised"),
                        (sorted(unexpected), "hold tensor {}, which the model does not have")):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise InputError(f"{folder}: the weights {what.format(repr(names[0]) + more)}; the folder holds another "
                             "or a damaged model (re-export or re-download it)")


def check_tensor_shapes(folder: Path, mismatched: Iterable[tuple[str, Any, Any]]) -> None:
    """A tensor of the wrong shape means another model or a damaged file; transformers would print a
    multi-line report and raise, or (with ignore_mismatched_sizes) randomly initialise it: one line instead.
    `mismatched` holds (name, shape in the folder, shape the model expects), as transformers reports it."""
    rows = sorted(mismatched, key=lambda row: row[0])
    if rows:
        name, found, expected = rows[0]
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        raise InputError(f"{folder}: the weights hold tensor {name!r}{more} with shape {list(found)}, but the model "
                         f"expects {list(expected)}; the folder holds another or a damaged model (re-export or "
                         "re-download it)")


def resolve_device(device: str) -> torch.device:
    """'auto': this rank's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"device: {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device: {device!r} asked for but no CUDA GPU is visible; use device=cpu or auto")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on a GPU, float32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"dtype: {dtype!r} is not supported; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_backbone(name: str, model: str | None = None, device: str = "auto", dtype: str = "auto",
                  options: dict | None = None, _chain: tuple[Path, ...] = ()) -> Any:
    """A registered backbone built from a config's fields (shared by generate, eval and training).

    `model` may also be a peft LoRA adapter folder (backbones/adapters.py): its base is loaded the same
    way (itself maybe an adapter folder) and the adapter merged in. One progress bar (ours) rather than
    transformers' one per weight file.
    """
    from unirl_kit.backbones.adapters import ADAPTER_CONFIG, adapter_base, apply_adapter, is_adapter_dir
    from unirl_kit.registry import registry

    if is_adapter_dir(model):
        folder = Path(str(model)).resolve()
        if folder in _chain or len(_chain) > 8:
            raise InputError(f"{folder / ADAPTER_CONFIG}: base_model_name_or_path leads back to this adapter; "
                             "point it at the model the adapter was trained on")
        base = adapter_base(folder, getattr(registry("backbones").get(name), "DEFAULT_MODEL", None))
        try:
            backbone = load_backbone(name, base, device, dtype, options, (*_chain, folder))
        except InputError as exc:
            raise InputError(f"{folder / ADAPTER_CONFIG}: base_model_name_or_path {base!r}: {exc}") from None
        backbone.model = apply_adapter(backbone.model, folder)
        return backbone
    kwargs = {**(options or {}), "device": device, "dtype": dtype}
    if model is not None:
        kwargs["model"] = model
    with no_transformers_bars():
        return registry("backbones").build(name, **kwargs)


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """transformers' own tqdm bars (one per weight file loaded or shard written) off for a block: the
    stage's progress is ours, and a log file (no terminal) gets no tqdm lines."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()
