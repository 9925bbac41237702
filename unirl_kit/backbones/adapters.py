"""peft's LoRA adapter folder (adapter_config.json + adapter_model.safetensors), written and read here only.

A LoRA run saves one beside its merged export, so the adapter (megabytes, not the whole model) can be
shared and loaded with `peft.PeftModel.from_pretrained(base_module, folder)`. Wherever a model folder is
read (`load_backbone`), an adapter folder also works: its base (`base_model_name_or_path`) is loaded, the
adapter is merged into it, and the backbone carries plain weights again (a later LoRA run adds its own).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from unirl_kit.jsonl import read_json
from unirl_kit.types import InputError, first_line

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_NAME = "default"  # peft's adapter name; its saved keys leave it out
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the module: the prefix of peft's saved keys


def is_adapter_dir(model: str | Path | None) -> bool:
    """A local folder holding adapter_config.json (a merged model folder has config.json instead)."""
    return model is not None and (Path(model) / ADAPTER_CONFIG).is_file()


def peft_key(name: str) -> str | None:
    """The key peft saves for a module's adapter tensor (`x.lora_A.default.weight` ->
    `base_model.model.x.lora_A.weight`); None for a tensor that is not part of an adapter."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if parts[i] == ADAPTER_NAME and parts[i - 1].startswith("lora_"):
            return PEFT_PREFIX + ".".join(parts[:i] + parts[i + 1:])
    return None


def save_adapter(model: torch.nn.Module, folder: Path, config: Any, base: str | None) -> Path:
    """`model`'s adapter tensors and `config` (a peft LoraConfig) in peft's own layout; the weights go
    first, so a folder with adapter_config.json holds a whole adapter."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: p.detach().cpu().contiguous() for n, p in model.named_parameters()
               if (key := peft_key(n)) is not None}
    if not tensors:
        raise ValueError("save_adapter: the model holds no LoRA adapter")
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    saved = copy.deepcopy(config)
    saved.base_model_name_or_path, saved.inference_mode = base, True
    saved.save_pretrained(str(folder))
    return folder


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json as a dict, refused in one line unless it describes a LoRA adapter."""
    path = Path(folder) / ADAPTER_CONFIG
    data = read_json(path)  # not UTF-8 or malformed: one line naming the file
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object; expected a peft adapter config")
    if data.get("peft_type") != "LORA":
        raise InputError(f"{path}: peft_type is {data.get('peft_type')!r}; only LoRA adapters (\"LORA\") load here")
    if not (Path(folder) / ADAPTER_WEIGHTS).is_file():
        raise InputError(f"{folder}: an adapter folder without {ADAPTER_WEIGHTS}; copy the whole folder")
    return data


def adapter_base(folder: Path, default: str | None) -> str:
    """What the adapter was trained on: `base_model_name_or_path`, else `default` (the backbone's own
    weights, e.g. tiny-shapes'), else a one-line error naming the field."""
    base = read_adapter_config(folder).get("base_model_name_or_path") or default
    if not base:
        raise InputError(f"{Path(folder) / ADAPTER_CONFIG}: base_model_name_or_path is empty; set it to the model "
                         "folder (or hub id) the adapter was trained on")
    return str(base)


def apply_adapter(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """Merge the adapter in `folder` into `model` in place (peft injects, loads, merges, unloads); a file that
    does not fit the model (another base) is refused in one line before any weight changes."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    from unirl_kit.backbones.loading import check_finite_weights
    from unirl_kit.checkpoint import read_tensors

    folder = Path(folder)
    data, weights_path = read_adapter_config(folder), folder / ADAPTER_WEIGHTS
    tensors = read_tensors(weights_path, "re-export the adapter")
    check_finite_weights(tensors, folder, (ADAPTER_WEIGHTS,))
    mismatch = (f"; it does not fit this base ({data.get('base_model_name_or_path')!r}): point "
                f"{ADAPTER_CONFIG} base_model_name_or_path at the model the adapter was trained on")
    try:
        config = PeftLoraConfig.from_peft_type(**data)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{folder / ADAPTER_CONFIG}: not a valid LoRA config ({first_line(exc)})") from None
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise InputError(f"{folder / ADAPTER_CONFIG}: target_modules: {first_line(exc)}{mismatch}") from None
    try:
        _load_adapter_tensors(model, tensors, weights_path, mismatch)
    except InputError:
        unload(model, merge=False)  # the model stays as it was
        raise
    return unload(model, merge=True)


def _load_adapter_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, mismatch: str) -> None:
    """Copy peft-keyed tensors into the injected adapter; every adapter tensor must be given, with its shape."""
    own = {key: name for name in model.state_dict() if (key := peft_key(name)) is not None}
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors))
    for names, what in ((unexpected, "holds tensor {}, which the model has no layer for"),
                        (missing, "lacks tensor {}")):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise InputError(f"{path}: {what.format(repr(names[0]) + more)}{mismatch}")
    state = model.state_dict()
    for key, name in own.items():
        if tuple(tensors[key].shape) != tuple(state[name].shape):
            raise InputError(f"{path}: tensor {key!r} has shape {list(tensors[key].shape)}, the model's adapter "
                             f"{list(state[name].shape)}{mismatch}")
    model.load_state_dict({name: tensors[key] for key, name in own.items()}, strict=False)


def unload(model: torch.nn.Module, merge: bool) -> torch.nn.Module:
    """Replace every peft layer by its base layer, first merging the adapter into it when `merge`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        if merge:
            layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    if "peft_config" in vars(model):  # what inject left on the module: a later LoRA run would count it twice
        del model.peft_config
    return model
